"""The headless browser the Playwright tests and benchmarks drive: Debian's chromium."""
import os
import shutil

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]
HAVE_CHROMIUM = bool(shutil.which("chromium")) or os.path.exists(CHROMIUM)
