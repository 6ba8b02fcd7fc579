"""Open a page in headless Chromium (Debian's `chromium`) and report what it loaded: each audio element's duration
(after its metadata loaded; -1 on a decode error), each video element's duration and videoWidth (the same way),
each image's naturalWidth, and every resource URL requested."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

PROBE = """<script>
(async () => {
  const wait = (a) => new Promise(res => {
    if (a.readyState >= 1) return res(a.duration);
    a.addEventListener('loadedmetadata', () => res(a.duration));
    a.addEventListener('error', () => res(-1));
    setTimeout(() => res(-2), 10000);
    a.load();
  });
  const durations = await Promise.all([...document.querySelectorAll('audio')].map(wait));
  const videos = [...document.querySelectorAll('video')];
  const vdur = await Promise.all(videos.map(wait));
  await Promise.all([...document.images].map(i => i.complete ? 0 : new Promise(r => { i.onload = i.onerror = r; })));
  const out = {audio: durations, images: [...document.images].map(i => i.naturalWidth),
               video: videos.map((v, i) => ({duration: vdur[i], width: v.videoWidth})),
               resources: performance.getEntriesByType('resource').map(e => e.name),
               sources: [...document.querySelectorAll('[src],[href]')].map(e => e.src || e.href)};
  const pre = document.createElement('pre'); pre.id = 'probe-result'; pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
})();
</script>"""


def chromium() -> str | None:
    """Path of a Chromium binary, installing Debian's package when it is missing and apt-get is usable."""
    for name in ("chromium", "chromium-browser"):
        if shutil.which(name):
            return shutil.which(name)
    if shutil.which("apt-get"):
        env = {"DEBIAN_FRONTEND": "noninteractive", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
        subprocess.run(["apt-get", "update", "-qq"], capture_output=True, timeout=600, env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", "chromium"], capture_output=True, timeout=900, env=env)
    return shutil.which("chromium")


def _flags(binary: str) -> list[str]:
    # every host name resolves nowhere and every proxied request goes to a closed local port: nothing leaves
    return [binary, "--headless", "--no-sandbox", "--disable-gpu", "--allow-file-access-from-files",
            "--host-resolver-rules=MAP * ~NOTFOUND", "--proxy-server=127.0.0.1:9", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--mute-audio"]


def probe(page: Path, screenshot: Path | None = None, binary: str | None = None) -> dict:
    binary = binary or chromium()
    page = Path(page).resolve()
    copy = page.with_name(page.stem + ".probe.html")
    copy.write_text(page.read_text().replace("</body>", PROBE + "</body>"))
    try:
        out = subprocess.run(_flags(binary) + ["--virtual-time-budget=20000", "--dump-dom", copy.as_uri()],
                             capture_output=True, text=True, timeout=180)
    finally:
        copy.unlink()
    m = re.search(r'<pre id="probe-result">(.*?)</pre>', out.stdout, re.S)
    if not m:
        raise RuntimeError(f"chromium gave no probe result (rc {out.returncode}): {out.stderr[-2000:]}")
    result = json.loads(m.group(1).replace("&quot;", '"').replace("&amp;", "&").replace("&lt;", "<")
                        .replace("&gt;", ">"))
    if screenshot is not None:
        # the time budget lets videos load their first frame before the shot
        subprocess.run(_flags(binary) + [f"--screenshot={screenshot}", "--window-size=1200,2400",
                                         "--virtual-time-budget=5000", page.as_uri()],
                       capture_output=True, timeout=180)
    return result
