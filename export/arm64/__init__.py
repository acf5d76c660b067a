"""Edge benchmarks on an emulated ARM64 CPU (QEMU user mode): agreement with x86 and instruction counts.

    python -m export.arm64 unet_fp32.tflite unet_int8.tflite --cpu cortex-a76 cortex-a53 --json arm.json
    kseg bench unet_fp32.tflite unet_int8.tflite --arm64 cortex-a76 cortex-a53

`root` builds and caches the arm64 Debian root (debootstrap, QEMU, the instruction-count
plugin, a venv with the host's ai-edge-litert, numpy and Pillow); `measure` runs the models
there and on x86 on the same inputs; `agreement` holds the per-variant rules; `cpus` the
emulated cores and the configurations refused as known to give wrong results.
Only `guest` runs inside the root; nothing here imports TensorFlow.
"""
