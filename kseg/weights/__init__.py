"""Published weights into kseg models, read without torch (safetensors, torch zip archives, npz).

    read_state_dict(path)             {name: np.ndarray} of a .safetensors / .pth / .bin / .npz file
    load_segformer(path, ...)         a SegFormer from a Hugging Face, NVlabs/mmseg or encoder-only MiT checkpoint
    segformer_from_keras_hub(model)   a SegFormer with the weights of a keras-hub SegFormer or MiT backbone
"""

from kseg.weights.reading import read_safetensors, read_state_dict, write_safetensors
from kseg.weights.segformer import load_segformer
from kseg.weights.segformer_keras_hub import segformer_from_keras_hub

__all__ = ["load_segformer", "read_safetensors", "read_state_dict", "segformer_from_keras_hub", "write_safetensors"]
