# Shared by setup_deploy_env.sh and setup_label_env.sh (sourced, not run).
# app_env_stale VENV NAME FILES...: make the venv VENV if it is missing; succeed when its stamp
# (.medlocker-NAME-setup, a hash of FILES) says an install is due. Sets $stamp and $want for the caller,
# which writes "$want" > "$stamp" once its installs succeeded.
app_env_stale() {
    local venv=$1 name=$2
    shift 2
    if [ ! -x "$venv/bin/python" ]; then
        "${PYTHON:-python3}" -m venv "$venv"
    fi
    stamp=$venv/.medlocker-$name-setup
    want=$(cat "$@" | sha256sum | cut -c1-16)
    [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]
}
