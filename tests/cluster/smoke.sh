#!/usr/bin/env bash
# Smoke test of the local control plane started by scripts/cluster.sh up:
#   1. a Deployment becomes Available (scheduler places pods on the kwok node,
#      kwok marks them Ready, deployment + replicaset controllers do the rest);
#   2. deleting a namespace completes (namespace controller + garbage collector);
#   3. server-side apply of a CRD with an x-kubernetes-validations CEL rule, and
#      the API server refusing an invalid object with the rule's message.
# Usage: scripts/cluster.sh up && tests/cluster/smoke.sh
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
eval "$("$ROOT/scripts/cluster.sh" env)"

ns="smoke-$$"
step() { printf '[smoke] %s\n' "$*" >&2; }
fail() { printf '[smoke] FAIL: %s\n' "$*" >&2; exit 1; }
t0() { date +%s%3N; }
took() { echo "$(( $(date +%s%3N) - $1 ))ms"; }

cleanup() {
  kubectl delete namespace "$ns" --ignore-not-found --wait=false >/dev/null 2>&1 || true
  kubectl delete crd widgets.smoke.anchorpipe.dev --ignore-not-found --wait=false >/dev/null 2>&1 || true
}
trap cleanup EXIT

kubectl create namespace "$ns" >/dev/null

step "1. deployment with 2 replicas becomes Available"
t=$(t0)
kubectl -n "$ns" create deployment x --image=nginx --replicas=2 >/dev/null
kubectl -n "$ns" wait deployment/x --for=condition=Available --timeout=60s >/dev/null \
  || { kubectl -n "$ns" get deploy,rs,pods -o wide >&2; fail "deployment not Available"; }
ready="$(kubectl -n "$ns" get deployment x -o jsonpath='{.status.readyReplicas}')"
[[ "$ready" == 2 ]] || fail "readyReplicas=$ready, want 2"
nodes="$(kubectl -n "$ns" get pods -l app=x -o jsonpath='{range .items[*]}{.spec.nodeName}{"\n"}{end}' | sort -u)"
[[ "$nodes" == kwok-node-0 ]] || fail "pods on nodes '$nodes', want kwok-node-0"
kubectl -n "$ns" get pods -l app=x -o wide >&2
step "   ok ($(took "$t"))"

step "2. namespace deletion completes"
t=$(t0)
kubectl delete namespace "$ns" --timeout=60s >/dev/null || fail "namespace $ns not deleted"
kubectl get namespace "$ns" >/dev/null 2>&1 && fail "namespace $ns still exists"
step "   ok ($(took "$t"))"

step "3. CRD with a CEL rule: server-side apply, invalid object refused"
t=$(t0)
kubectl apply --server-side --field-manager=smoke -f - >/dev/null <<'EOF'
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.smoke.anchorpipe.dev
spec:
  group: smoke.anchorpipe.dev
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget}
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            x-kubernetes-validations:
            - rule: "self.minReplicas <= self.maxReplicas"
              message: "minReplicas must not exceed maxReplicas"
            properties:
              minReplicas: {type: integer}
              maxReplicas: {type: integer}
EOF
kubectl wait crd/widgets.smoke.anchorpipe.dev --for=condition=Established --timeout=30s >/dev/null
kubectl create namespace "$ns" >/dev/null
# The CRD may be Established a moment before discovery serves it.
for _ in $(seq 50); do kubectl api-resources --api-group=smoke.anchorpipe.dev 2>/dev/null | grep -q widgets && break; sleep 0.1; done
kubectl -n "$ns" apply --server-side --field-manager=smoke -f - >/dev/null <<'EOF'
apiVersion: smoke.anchorpipe.dev/v1
kind: Widget
metadata: {name: good}
spec: {minReplicas: 1, maxReplicas: 3}
EOF
if out="$(kubectl -n "$ns" apply --server-side --field-manager=smoke -f - 2>&1 <<'EOF'
apiVersion: smoke.anchorpipe.dev/v1
kind: Widget
metadata: {name: bad}
spec: {minReplicas: 5, maxReplicas: 3}
EOF
)"; then
  fail "invalid Widget was accepted"
fi
printf '%s\n' "$out" >&2
[[ "$out" == *"minReplicas must not exceed maxReplicas"* ]] || fail "refusal does not carry the CEL message"
step "   ok ($(took "$t"))"
step "all passed"
