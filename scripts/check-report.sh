#!/usr/bin/env bash
# Renders an HTML report of `moeplace eval --report` in headless Chromium and saves a
# screenshot, so a person can check the page draws (no external assets are loaded:
# background networking is off).
# Usage: scripts/check-report.sh report.html [screenshot.png]
# Needs chromium (Debian/Ubuntu: apt-get install chromium).
set -euo pipefail
report="$(realpath "$1")"
shot="$(realpath -m "${2:-${report%.html}.png}")"
browser="$(command -v chromium || command -v chromium-browser || command -v google-chrome)"
"$browser" --headless --no-sandbox --disable-gpu --disable-background-networking \
  --window-size=1400,2400 --screenshot="$shot" "file://$report" 2>/dev/null
test -s "$shot"
echo "screenshot: $shot"
