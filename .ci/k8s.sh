#!/usr/bin/env bash
# Validates deploy/kubernetes.yaml against the Kubernetes API schemas with kubernetes-validate
# (from PyPI, installed into a throwaway virtual environment; it bundles the schemas, so the
# check needs no cluster). Strict: unknown fields are errors.
#
#   .ci/k8s.sh [KUBERNETES_VERSION]
set -euo pipefail
cd "$(dirname "$0")/.."
version=${1:-1.31}
venv=${K8S_VENV:-target/k8s-venv}
if [ ! -x "$venv/bin/kubernetes-validate" ]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check 'kubernetes-validate>=1.31'
fi
echo "== kubernetes-validate $("$venv/bin/pip" show kubernetes-validate | sed -n 's/^Version: //p'), Kubernetes $version"
"$venv/bin/kubernetes-validate" --strict --kubernetes-version "$version" deploy/kubernetes.yaml
