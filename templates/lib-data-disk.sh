# prepare_data_disk DEVICE MOUNTPOINT LABEL
# Formats DEVICE (xfs) only when it holds neither a filesystem nor a partition table, adds it to
# /etc/fstab by UUID once, and mounts it at MOUNTPOINT. A disk that holds data is never formatted.
prepare_data_disk() {
  local device=$1 mountpoint=$2 label=$3 uuid
  ensure_packages xfsprogs  # lib-apt.sh
  if [ ! -b "$device" ]; then
    echo "data disk ${device} not found" >&2
    return 1
  fi
  local fstype ptype
  fstype=$(blkid -o value -s TYPE "$device" || true)
  ptype=$(blkid -o value -s PTTYPE "$device" || true)
  if [ -z "$fstype" ] && [ -n "$ptype" ]; then
    echo "data disk ${device} has a ${ptype} partition table and no filesystem; not formatting it" \
      "(wipe it with wipefs if it holds nothing)" >&2
    return 1
  fi
  if [ -z "$fstype" ]; then
    echo "formatting the empty data disk ${device} (xfs)"
    mkfs.xfs -q -L "$label" "$device"
  fi
  uuid=$(blkid -o value -s UUID "$device" || true)
  if [ -z "$uuid" ]; then
    echo "data disk ${device} has a filesystem without a UUID; cannot mount it by UUID" >&2
    return 1
  fi
  install -d -m 0755 "$mountpoint"
  if ! grep -q "^UUID=${uuid} " /etc/fstab; then
    echo "UUID=${uuid} ${mountpoint} xfs defaults,noatime,nofail 0 2" >>/etc/fstab
    systemctl daemon-reload
  fi
  mountpoint -q "$mountpoint" || mount "$mountpoint"
}
