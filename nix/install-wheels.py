"""The builder of repro's Nix environments: installs fetched wheels into $out, stdlib only.

Run by the environment's own interpreter (the derivation's `builder`), so no pip, uv or
nixpkgs is needed inside the build, where PATH is empty. It does what an installer does for a
wheel (PEP 427 / the binary distribution format spec), and nothing that could differ between
two builds of the same wheels:

- $out is laid out as a virtualenv: `pyvenv.cfg`, `bin/python*` linking the interpreter,
  `lib/pythonX.Y/site-packages`;
- each wheel is unpacked in filename order; `<name>.data/{purelib,platlib,scripts,data,
  headers}` go where a venv puts them; a member naming a path outside its place is refused;
- console and GUI scripts from `entry_points.txt`, and `#!python` scripts, get the shebang
  `#!$out/bin/python` (no `env`, no PATH lookup);
- bytecode is compiled with the unchecked-hash invalidation mode (no mtimes) under a fixed
  PYTHONHASHSEED (set by the derivation), so `nix-build --check` finds the same bytes.

Environment (set by default.nix): out, wheels (space-separated store paths), interpreter
(the absolute path bin/python links to).
"""

import compileall
import configparser
import os
import py_compile
import sys
import zipfile
from pathlib import Path, PurePosixPath

SCRIPT = """#!{python}
import sys
from {module} import {head}
if __name__ == "__main__":
    sys.exit({call}())
"""


def main() -> None:
    out = Path(os.environ["out"])
    interpreter = os.environ["interpreter"]
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    site = out / "lib" / f"python{version}" / "site-packages"
    bindir = out / "bin"
    site.mkdir(parents=True)
    bindir.mkdir()
    (out / "pyvenv.cfg").write_text(
        f"home = {Path(interpreter).parent}\ninclude-system-site-packages = false\n"
        f"version = {'.'.join(map(str, sys.version_info[:3]))}\n"
        "executable = " + interpreter + "\n")
    for name in ("python", "python3", f"python{version}"):
        (bindir / name).symlink_to(interpreter)
    python = str(bindir / "python")
    places = {"purelib": site, "platlib": site, "scripts": bindir, "data": out,
              "headers": out / "include" / "site" / f"python{version}"}
    for wheel in sorted(os.environ["wheels"].split(), key=lambda p: Path(p).name[33:]):
        install(Path(wheel), site, places, python)
    compileall.compile_dir(str(site), quiet=2, workers=1,
                           invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)


def install(wheel: Path, site: Path, places: dict[str, Path], python: str) -> None:
    with zipfile.ZipFile(wheel) as zf:
        for info in sorted(zf.infolist(), key=lambda i: i.filename):
            if info.is_dir():
                continue
            dest = _destination(PurePosixPath(info.filename), site, places, wheel)
            dest.parent.mkdir(parents=True, exist_ok=True)
            data = zf.read(info)
            if dest.parent == places["scripts"] and data.startswith((b"#!python", b"#!/")):
                first, _, rest = data.partition(b"\n")
                if b"python" in first:
                    data = b"#!" + python.encode() + b"\n" + rest
            dest.write_bytes(data)
            mode = (info.external_attr >> 16) & 0o777
            if mode & 0o111 or dest.parent == places["scripts"]:
                dest.chmod(0o755)
            # the wheel's own .dist-info only (a vendored copy deeper down names no scripts)
            if dest.parent.parent == site and dest.parent.name.endswith(".dist-info"):
                if dest.name == "entry_points.txt":
                    _scripts(dest, places["scripts"], python)
                elif dest.name == "INSTALLER":
                    dest.write_text("repro-nix\n")


def _destination(member: PurePosixPath, site: Path, places: dict[str, Path],
                 wheel: Path) -> Path:
    """Where a wheel member goes; a member that would leave its place is refused."""
    parts = member.parts
    if member.is_absolute() or ".." in parts:
        raise SystemExit(f"{wheel.name}: member {member} names a path outside the env")
    if parts[0].endswith(".data") and len(parts) > 2 and parts[1] in places:
        return places[parts[1]].joinpath(*parts[2:])
    return site.joinpath(*parts)


def _scripts(entry_points: Path, bindir: Path, python: str) -> None:
    parser = configparser.ConfigParser(delimiters=("=",), interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(entry_points.read_text())
    for section in ("console_scripts", "gui_scripts"):
        if not parser.has_section(section):
            continue
        for name, target in sorted(parser.items(section)):
            module, _, attr = target.partition(":")
            attr = attr.split("[")[0].strip()
            if not attr:  # a bare module is not a console script entry point
                continue
            head = attr.split(".")[0]
            script = bindir / name
            script.write_text(SCRIPT.format(python=python, module=module.strip(), head=head,
                                            call=attr))
            script.chmod(0o755)


if __name__ == "__main__":
    main()
