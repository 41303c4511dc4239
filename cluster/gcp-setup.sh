#!/usr/bin/env bash
# What cluster/gcp.yaml expects to exist, made once per project and region:
#
#   PROJECT=my-gcp-project REGION=us-central1 ADMIN_CIDR=203.0.113.7/32 BUCKET=my-depthlib-bucket \
#       bash cluster/gcp-setup.sh
#
# - VPC `depthlib-ray` (custom mode, so none of the default network's open rules) with one
#   subnet, and Cloud NAT so workers without external addresses can still pull images
#   and packages.
# - Firewall: all traffic between instances tagged `depthlib-ray`; SSH (22) from
#   ADMIN_CIDR to them; nothing else comes in (GCP denies other ingress).
#   The dashboard (8265), GCS (6379), the client server (10001) and the metrics port
#   (8080) are reachable only from the cluster itself and through the SSH tunnel.
# - Service accounts `depthlib-ray-head` (launches and deletes workers, may attach the
#   worker account to them) and `depthlib-ray-worker`, both with object access to the
#   data bucket. Nodes run as these accounts: no key file is ever created.
set -euo pipefail

: "${PROJECT:?set PROJECT to your GCP project id}"
: "${REGION:?set REGION, e.g. us-central1 (the region of cluster/gcp.yaml)}"
: "${ADMIN_CIDR:?set ADMIN_CIDR to the one network allowed to SSH (e.g. your VPN, a /32)}"
: "${BUCKET:?set BUCKET to the data bucket (without gs://)}"
SUBNET_RANGE="${SUBNET_RANGE:-10.80.0.0/20}"

if [[ "$ADMIN_CIDR" == "0.0.0.0/0" || "$ADMIN_CIDR" == "::/0" ]]; then
    echo "ADMIN_CIDR must be a network you control, not the whole internet" >&2
    exit 1
fi

g() { gcloud --project="$PROJECT" --quiet "$@"; }

# Network: a custom-mode VPC has no pre-made firewall rules.
g compute networks create depthlib-ray --subnet-mode=custom
g compute networks subnets create depthlib-ray --network=depthlib-ray --region="$REGION" \
    --range="$SUBNET_RANGE" --enable-private-ip-google-access
g compute routers create depthlib-ray --network=depthlib-ray --region="$REGION"
g compute routers nats create depthlib-ray --router=depthlib-ray --region="$REGION" \
    --auto-allocate-nat-external-ips --nat-all-subnet-ip-ranges

# Firewall: the cluster talks to itself; people only SSH in, from one network.
g compute firewall-rules create depthlib-ray-internal --network=depthlib-ray --direction=INGRESS \
    --action=ALLOW --rules=tcp,udp,icmp --source-tags=depthlib-ray --target-tags=depthlib-ray
g compute firewall-rules create depthlib-ray-ssh --network=depthlib-ray --direction=INGRESS \
    --action=ALLOW --rules=tcp:22 --source-ranges="$ADMIN_CIDR" --target-tags=depthlib-ray

# Identities of the nodes (no keys: the node's metadata server hands out tokens).
HEAD_SA="depthlib-ray-head@${PROJECT}.iam.gserviceaccount.com"
WORKER_SA="depthlib-ray-worker@${PROJECT}.iam.gserviceaccount.com"
g iam service-accounts create depthlib-ray-head --display-name="depthlib Ray head"
g iam service-accounts create depthlib-ray-worker --display-name="depthlib Ray workers"
g projects add-iam-policy-binding "$PROJECT" --member="serviceAccount:$HEAD_SA" \
    --role=roles/compute.instanceAdmin.v1 --condition=None
g iam service-accounts add-iam-policy-binding "$WORKER_SA" --member="serviceAccount:$HEAD_SA" \
    --role=roles/iam.serviceAccountUser
for sa in "$HEAD_SA" "$WORKER_SA"; do
    g storage buckets add-iam-policy-binding "gs://$BUCKET" --member="serviceAccount:$sa" \
        --role=roles/storage.objectUser
done

echo "done: now set project_id: $PROJECT and the service-account e-mails in cluster/gcp.yaml"
