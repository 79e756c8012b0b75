# seconds_since T0: seconds (one decimal) since T0, an $EPOCHREALTIME value (bash 5).
seconds_since() {
  awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }'
}
