#!/usr/bin/env bash
# An image of devstack's MongoDB-wire server (mongo-java-server, the jars devstack builds
# from Maven Central) on a Debian bookworm JRE, for `mongodb.bundled.image` in the kind
# tests where mongo:7.0 cannot be pulled. Prints the image name; cached like the others.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
HERE=$ROOT/scripts/kind
T0=$(now)

jmod=$(cd "$ROOT" && PYTHONPATH=$ROOT "$PY" "$HERE/gobuild.py" "${MONGO_TOOLS[@]}" | cut -d' ' -f2)
home=$(dirname "$(dirname "$jmod")")   # <cache>/mongo-java-server-<version>/{lib,classes}
K=$(key "$JRE_PACKAGES" "$MONGO_JAVA_SERVER_VERSION" "$0" "$HERE/mongo/mongod" "$ROOT/devstack/mongo_java/MongoWireServer.java")
TAR=$KIND_CACHE/images/mongo-java-server-$K.tar
if image_cached "$MONGO_IMAGE" "$TAR" \
   && [ "$(docker image inspect -f '{{index .Config.Labels "pushtask.key"}}' "$MONGO_IMAGE")" = "$K" ]; then
  echo "$MONGO_IMAGE"; exit 0
fi
jre=$(rootfs jre "$JRE_PACKAGES")
WORK=$(mktemp -d); trap 'rm -rf "$WORK"' EXIT
mkdir -p "$WORK/add/opt/mongo-java-server" "$WORK/add/usr/local/bin" "$WORK/add/data/db"
cp -r "$home/lib" "$home/classes" "$WORK/add/opt/mongo-java-server/"
cp "$HERE/mongo/mongod" "$WORK/add/usr/local/bin/"
# The chart runs it as uid 999 with fsGroup 999 on an emptyDir; a bare `docker run` as well.
chmod 1777 "$WORK/add/data/db"
cp "$jre" "$WORK/image.tar"
# Only new paths: a directory the root filesystem has already (./opt) would be a duplicate.
tar -C "$WORK/add" -rf "$WORK/image.tar" ./opt/mongo-java-server ./usr/local/bin/mongod ./data
docker import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'USER 999:999' --change 'EXPOSE 27017' --change "LABEL pushtask.key=$K" \
  --change 'CMD ["mongod", "--bind_ip_all", "--dbpath", "/data/db"]' \
  "$WORK/image.tar" "$MONGO_IMAGE" >/dev/null
save_image "$MONGO_IMAGE" "$TAR"
log "built $MONGO_IMAGE in $(took "$T0")s"
echo "$MONGO_IMAGE"
