"""Render a kustomization the way `kubectl apply -k` would, for the subset deploy/k8s uses.

No kustomize binary is available where the tests run, and what an operator applies is the
rendered overlay, not the base: this renders it so the tests validate that. It handles
`resources` (files and kustomization directories), `images` and `patches` given as
strategic-merge patch files, with the merge keys of the lists those patches touch; any other
kustomization field, or a patch directive it does not know, fails loudly instead of being
silently ignored, so the manifests cannot outgrow the renderer unnoticed.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

Manifest = dict[str, Any]

SUPPORTED = {"apiVersion", "kind", "resources", "images", "patches"}

# Lists merged item by item in a strategic-merge patch (the patchMergeKey of their field in
# the Kubernetes API); every other list is replaced, as for HPA metrics or tolerations.
MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "ports": "containerPort",
    "imagePullSecrets": "name",
}


def load_all(path: Path) -> list[Manifest]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def render(directory: Path) -> list[Manifest]:
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unsupported = set(kustomization) - SUPPORTED
    assert not unsupported, f"{directory}: the test renderer does not handle {unsupported}"
    manifests: list[Manifest] = []
    for entry in kustomization.get("resources", []):
        path = (directory / entry).resolve()
        manifests += render(path) if path.is_dir() else load_all(path)
    for patch_entry in kustomization.get("patches", []):
        assert set(patch_entry) == {"path"}, f"{directory}: unsupported patch {patch_entry}"
        for patch in load_all(directory / patch_entry["path"]):
            target = find(manifests, patch["kind"], patch["metadata"]["name"])
            merged = strategic_merge(target, patch)
            manifests[manifests.index(target)] = merged
    for image in kustomization.get("images", []):
        set_image(manifests, image)
    return manifests


def find(manifests: list[Manifest], kind: str, name: str) -> Manifest:
    found = [m for m in manifests if m["kind"] == kind and m["metadata"]["name"] == name]
    assert len(found) == 1, f"patch target {kind}/{name}: {len(found)} matches"
    return found[0]


def strategic_merge(original: Any, patch: Any, field: str = "") -> Any:
    if isinstance(patch, dict):
        assert not any(k.startswith("$") for k in patch), f"unsupported directive in {patch}"
        if not isinstance(original, dict):
            return copy.deepcopy(patch)
        merged = copy.deepcopy(original)
        for key, value in patch.items():
            if value is None:
                merged.pop(key, None)
            else:
                merged[key] = strategic_merge(original.get(key), value, key)
        return merged
    if isinstance(patch, list) and field in MERGE_KEYS and isinstance(original, list):
        key = MERGE_KEYS[field]
        merged_list = copy.deepcopy(original)
        for item in patch:
            index = next((i for i, o in enumerate(original) if o.get(key) == item[key]), None)
            if index is None:
                merged_list.append(copy.deepcopy(item))
            else:
                merged_list[index] = strategic_merge(original[index], item, field)
        return merged_list
    return copy.deepcopy(patch)


def pod_containers(manifest: Manifest) -> list[dict[str, Any]]:
    """Containers of a workload's pod template (Deployment and the like)."""
    spec = manifest.get("spec", {}).get("template", {}).get("spec", {})
    containers: list[dict[str, Any]] = spec.get("containers", [])
    return containers + spec.get("initContainers", [])


def set_image(manifests: list[Manifest], image: dict[str, str]) -> None:
    unsupported = set(image) - {"name", "newName", "newTag", "digest"}
    assert not unsupported, f"images: unsupported fields {unsupported}"
    for manifest in manifests:
        for container in pod_containers(manifest):
            name, _, tag = container["image"].partition(":")
            if name != image["name"]:
                continue
            name = image.get("newName", name)
            if "digest" in image:
                container["image"] = f"{name}@{image['digest']}"
            else:
                new_tag = image.get("newTag", tag)
                container["image"] = f"{name}:{new_tag}" if new_tag else name
