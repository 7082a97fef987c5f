"""Print the installed versions of sfedge's key dependencies (CI prints what it resolved)."""

import importlib.metadata as metadata

PACKAGES = ("torch", "transformers", "tokenizers", "sentencepiece", "protobuf", "safetensors", "onnx", "onnxscript",
            "onnxruntime", "onnxruntime-gpu", "onnxruntime-genai", "numpy", "av", "Pillow", "opencv-python-headless",
            "torchvision", "jinja2", "ray")


def main() -> None:
    found = []
    for name in PACKAGES:
        try:
            found.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            pass
    print("resolved: " + ", ".join(found))


if __name__ == "__main__":
    main()
