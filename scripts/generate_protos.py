"""Regenerates the Python stubs under sam3_grpc/v1/ from protos/.

    python scripts/generate_protos.py          # write the stubs
    python scripts/generate_protos.py --check  # exit 1 if the committed stubs are stale

Because the proto path equals the package (sam3_grpc/v1/...), the generated imports
(`from sam3_grpc.v1 import common_pb2`) resolve without any rewriting.
"""

from __future__ import annotations

import argparse
import filecmp
import pathlib
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[1]
PROTO_ROOT = ROOT / "protos"
OUT_DIR = ROOT / "sam3_grpc" / "v1"
GENERATED_SUFFIXES = ("_pb2.py", "_pb2_grpc.py", "_pb2.pyi")


def generate(out_root: pathlib.Path) -> None:
    import grpc_tools
    from grpc_tools import protoc

    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in PROTO_ROOT.rglob("*.proto"))
    well_known = pathlib.Path(grpc_tools.__file__).parent / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"--python_out={out_root}",
        f"--pyi_out={out_root}",
        f"--grpc_python_out={out_root}",
        *protos,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")


def generated_files(directory: pathlib.Path) -> set[str]:
    return {p.name for p in directory.iterdir() if p.name.endswith(GENERATED_SUFFIXES)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the stubs are stale")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        generate(pathlib.Path(tmp))
        fresh_dir = pathlib.Path(tmp) / "sam3_grpc" / "v1"
        fresh = generated_files(fresh_dir)
        if args.check:
            current = generated_files(OUT_DIR) if OUT_DIR.exists() else set()
            _, mismatch, errors = filecmp.cmpfiles(fresh_dir, OUT_DIR, sorted(fresh), shallow=False)
            stale = sorted(set(mismatch) | set(errors) | (current - fresh))
            if stale:
                print("stale generated code:", ", ".join(stale), file=sys.stderr)
                print("run: python scripts/generate_protos.py", file=sys.stderr)
                return 1
            return 0
        OUT_DIR.mkdir(parents=True, exist_ok=True)
        for name in generated_files(OUT_DIR) - fresh:
            (OUT_DIR / name).unlink()
        for name in sorted(fresh):
            (OUT_DIR / name).write_bytes((fresh_dir / name).read_bytes())
        print(f"wrote {len(fresh)} files to {OUT_DIR.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
