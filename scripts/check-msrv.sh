#!/usr/bin/env bash
# Checks the workspace's declared minimum supported Rust version (MSRV), `rust-version` in the
# root Cargo.toml's [workspace.package], against the dependency graph locked in Cargo.lock.
#
#   scripts/check-msrv.sh
#
# What it proves:
# - every workspace member inherits the one declaration (`rust-version.workspace = true`);
# - no package in the resolved graph (every target platform, dev- and build-dependencies
#   included, read from `cargo metadata --locked`) declares a `rust-version` newer than the
#   workspace's: the declaration is not below what a locked dependency says it needs.
#
# What it cannot prove: that the workspace builds on that toolchain. This machine has one
# toolchain and no older one can be installed, so nothing is compiled with the declared version.
# Two other checks narrow the gap: clippy's `incompatible_msrv` lint (on by default, and the
# clippy gate denies warnings) reads `rust-version` and rejects any use of a standard-library
# item stabilised after it; and the language features the code relies on (edition 2024: 1.85,
# let chains: 1.88) are below it. Not covered: a dependency that declares no `rust-version`
# (the script lists how many), a newer language feature clippy does not flag, and a dependency
# whose declaration is wrong. Building with the declared toolchain is the full proof: the `msrv`
# job of .github/workflows/ci.yml installs it there and runs `cargo check --workspace --locked`.
#
# Fast: `cargo metadata` reads manifests and the lock file; nothing is compiled. Needs python3
# 3.11 or newer (tomllib).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

cargo metadata --format-version 1 --locked | python3 -c '
import json, sys, tomllib

def key(v):
    parts = [int(x) for x in v.split(".")]
    return tuple(parts + [0] * (3 - len(parts)))

with open("Cargo.toml", "rb") as f:
    declared = tomllib.load(f)["workspace"]["package"]["rust-version"]
meta = json.load(sys.stdin)
members = set(meta["workspace_members"])
failures = []
undeclared = 0
highest = ("0", "(none)")
for p in meta["packages"]:
    rv = p.get("rust_version")
    name = p["name"] + " " + p["version"]
    if p["id"] in members:
        with open(p["manifest_path"], "rb") as f:
            inherited = tomllib.load(f)["package"].get("rust-version") == {"workspace": True}
        if not inherited or rv is None or key(rv) != key(declared):
            failures.append(f"{name}: rust-version {rv} must be `rust-version.workspace = true`"
                            f" (the workspace declares {declared})")
        continue
    if rv is None:
        undeclared += 1
        continue
    if key(rv) > key(highest[0]):
        highest = (rv, name)
    if key(rv) > key(declared):
        failures.append(f"{name} declares rust-version {rv}, above the workspace declaration {declared}")

print(f"workspace rust-version {declared}; highest among locked dependencies: "
      f"{highest[0]} ({highest[1]}); {undeclared} dependencies declare none")
if failures:
    print("\n".join(failures), file=sys.stderr)
    sys.exit(1)
'
