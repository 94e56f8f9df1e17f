# Sourced by `./install.sh --system`: the on-prem install on a Debian/Ubuntu host.
# Uses install.sh's helpers (step, note, skip, did, die, PYTHON, ROOT). Idempotent: every step
# checks what is there; settings an operator edited are never overwritten.

SYSROOT="${APPLIANCE_SYSTEM_ROOT:-}"
SYS_USER=appliance
OPT_DIR="/opt/appliance"
DATA_DIR="/var/lib/appliance"
ETC_DIR="/etc/appliance"
UNIT_DIR="/etc/systemd/system"

system_user() {
    step "System user '$SYS_USER'"
    if [[ -n $SYSROOT ]]; then
        skip "throwaway root $SYSROOT: no user created"
    elif id "$SYS_USER" >/dev/null 2>&1; then
        skip "user $SYS_USER exists"
    else
        [[ $EUID -eq 0 ]] || die "--system needs root (sudo ./install.sh --system)"
        useradd --system --home-dir "$DATA_DIR" --shell /usr/sbin/nologin --user-group "$SYS_USER"
        did "system user $SYS_USER"
    fi
}

system_dirs() {
    step "Directories $OPT_DIR, $DATA_DIR, $ETC_DIR"
    if [[ -d $SYSROOT$OPT_DIR && -d $SYSROOT$DATA_DIR && -d $SYSROOT$ETC_DIR && -d $SYSROOT$UNIT_DIR ]]; then
        skip "directories exist"
        return 0
    fi
    mkdir -p "$SYSROOT$OPT_DIR" "$SYSROOT$DATA_DIR" "$SYSROOT$ETC_DIR" "$SYSROOT$UNIT_DIR"
    chmod 0750 "$SYSROOT$DATA_DIR"
    if [[ -z $SYSROOT ]]; then chown "$SYS_USER:$SYS_USER" "$DATA_DIR"; fi
    did "directories under ${SYSROOT:-/}"
}

system_venv() {
    step "Install the appliance into $OPT_DIR/venv"
    local venv="$SYSROOT$OPT_DIR/venv" stamp want
    stamp="$venv/.appliance-install-stamp"
    want="$(install_fingerprint system)-$(git -C "$ROOT" rev-parse HEAD 2>/dev/null || echo nogit)"
    if [[ -f $stamp && $(cat "$stamp") == "$want" && -x $venv/bin/appliance ]]; then
        skip "$OPT_DIR/venv is current"
        return 0
    fi
    [[ -x $venv/bin/python ]] || "$PYTHON" -m venv "$venv"
    "$venv/bin/python" -m pip --disable-pip-version-check install --quiet --upgrade pip
    note "pip install $ROOT (this takes a minute)"
    "$venv/bin/python" -m pip --disable-pip-version-check install --quiet "$ROOT"
    local d
    for d in "$ROOT"/plugins/*/; do
        if [[ -f ${d}pyproject.toml ]]; then
            "$venv/bin/python" -m pip --disable-pip-version-check install --quiet "$d"
            note "plugin $(basename "$d")"
        fi
    done
    echo "$want" >"$stamp"
    did "appliance into $OPT_DIR/venv"
}

system_env_file() {
    step "Settings in $ETC_DIR/appliance.env"
    local env_file="$SYSROOT$ETC_DIR/appliance.env"
    if [[ -f $env_file ]]; then
        skip "$ETC_DIR/appliance.env exists (kept as you left it)"
        return 0
    fi
    local key
    key="apl_root_$("$PYTHON" -c 'import secrets; print(secrets.token_urlsafe(32))')"
    (
        umask 077
        cat >"$env_file" <<ENV
# Settings of the appliance (every APPLIANCE_* variable is listed in README.md).
# systemd reads this file; restart after editing: systemctl restart appliance
APPLIANCE_DATA_DIR=$DATA_DIR
APPLIANCE_HOST=127.0.0.1
APPLIANCE_PORT=8000
APPLIANCE_LOG_FORMAT=json
APPLIANCE_ROOT_KEY=$key
APPLIANCE_BACKUP_INTERVAL_HOURS=24
# APPLIANCE_REDIS_URL=redis://127.0.0.1:6379/0
# APPLIANCE_SMTP_URL=smtp://user:pass@mail.example.com:587?starttls=true
ENV
    )
    if [[ -z $SYSROOT ]]; then chown "root:$SYS_USER" "$env_file"; chmod 0640 "$env_file"; fi
    did "$ETC_DIR/appliance.env with a generated root key (readable by root and $SYS_USER only)"
}

write_if_changed() {
    local target=$1 content=$2 label=$3
    if [[ -f $target && $(cat "$target") == "$content" ]]; then
        skip "$label unchanged"
        return 1
    fi
    printf '%s\n' "$content" >"$target"
    did "$label"
}

unit_text() {
    local description=$1 command=$2
    cat <<UNIT
[Unit]
Description=$description
Documentation=file://$OPT_DIR/README.md
After=network-online.target redis-server.service
Wants=network-online.target

[Service]
Type=exec
User=$SYS_USER
Group=$SYS_USER
EnvironmentFile=$ETC_DIR/appliance.env
ExecStart=$OPT_DIR/venv/bin/appliance $command
Restart=on-failure
RestartSec=2
KillSignal=SIGTERM
TimeoutStopSec=30
NoNewPrivileges=true
ProtectSystem=strict
ProtectHome=true
PrivateTmp=true
PrivateDevices=true
ReadWritePaths=$DATA_DIR

[Install]
WantedBy=multi-user.target
UNIT
}

system_units() {
    step "systemd units"
    local changed=0
    write_if_changed "$SYSROOT$UNIT_DIR/appliance.service" \
        "$(unit_text "The appliance: API, admin UI and workers" run)" "$UNIT_DIR/appliance.service" && changed=1
    write_if_changed "$SYSROOT$UNIT_DIR/appliance-worker.service" \
        "$(unit_text "The appliance: background workers only (optional, for more worker processes)" worker)" \
        "$UNIT_DIR/appliance-worker.service" && changed=1
    if [[ -n $SYSROOT ]]; then
        skip "throwaway root: systemctl not called"
    elif ! command -v systemctl >/dev/null 2>&1 || [[ ! -d /run/systemd/system ]]; then
        skip "systemd is not running here: start it yourself with $OPT_DIR/venv/bin/appliance run"
    else
        systemctl daemon-reload
        if [[ $changed == 1 ]]; then systemctl enable --now appliance.service; else systemctl enable appliance.service; fi
        did "appliance.service enabled and started"
    fi
}

system_install() {
    system_user
    system_dirs
    system_venv
    system_env_file
    system_units
    trap - ERR
    printf '\n==> Installed\n'
    [[ ${#INSTALLED[@]} -gt 0 ]] && printf '      - %s\n' "${INSTALLED[@]}"
    [[ ${#SKIPPED[@]} -gt 0 ]] && printf '      - skipped: %s\n' "${SKIPPED[@]}"
    cat <<DONE

    admin UI:  http://127.0.0.1:8000/admin  (sign in with APPLIANCE_ROOT_KEY from $ETC_DIR/appliance.env)
    status:    systemctl status appliance; journalctl -u appliance -f
    doctor:    sudo -u $SYS_USER env \$(cat $ETC_DIR/appliance.env | grep -v '^#' | xargs) $OPT_DIR/venv/bin/appliance doctor
    more workers on this box: systemctl enable --now appliance-worker
DONE
}
