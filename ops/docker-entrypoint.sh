#!/bin/sh
# Runs spellhost as the unprivileged `spellhost` user (uid 10001).
#
# Started as root (the image's default), it first makes the data directory the service's
# own: a fresh Fly.io volume is mounted over /data owned by root, where the service could not
# create secret.key or its database. Started as another user (`docker run --user`, Kubernetes
# runAsNonRoot), it runs spellhost as that user unchanged, and the image's own /data (0700,
# owned by spellhost) serves when no volume is mounted.
set -eu
data="${SPELLHOST_DATA_DIR:-/data}"
if [ "$(id -u)" = 0 ]; then
    mkdir -p "$data"
    # Walk the volume only when its top is not ours yet (first start on a fresh volume, or a
    # volume written under another uid); later starts touch one inode.
    if [ "$(stat -c %u "$data")" != 10001 ]; then
        chown -R spellhost:spellhost "$data"
    fi
    chmod 0700 "$data"
    exec setpriv --reuid=spellhost --regid=spellhost --init-groups --inh-caps=-all \
        -- /usr/local/bin/spellhost "$@"
fi
exec /usr/local/bin/spellhost "$@"
