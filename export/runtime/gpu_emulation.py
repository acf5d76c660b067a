"""A software GPU for LiteRT's GPU accelerator: Vulkan pointed at Chromium's SwiftShader."""

import os
from pathlib import Path

SWIFTSHADER_ICD = "/usr/lib/chromium/vk_swiftshader_icd.json"
_ICD_DIRS = ("/usr/share/vulkan/icd.d", "/etc/vulkan/icd.d", "/usr/local/share/vulkan/icd.d")


def enable_gpu_emulation():
    """Points Vulkan at Chromium's SwiftShader (a software GPU) when no ICD is configured.

    Must run before LiteRT's GPU accelerator loads (set it in the parent of a spawned child,
    or first thing in the child).

    Returns:
        Whether a Vulkan ICD is configured (by VK_ICD_FILENAMES or a system ICD folder).
    """
    if not os.environ.get("VK_ICD_FILENAMES") and os.path.exists(SWIFTSHADER_ICD):
        os.environ["VK_ICD_FILENAMES"] = SWIFTSHADER_ICD
        os.environ.setdefault("XDG_RUNTIME_DIR", "/tmp")
    if os.environ.get("VK_ICD_FILENAMES"):
        return True
    return any(Path(d).is_dir() and any(Path(d).glob("*.json")) for d in _ICD_DIRS)
