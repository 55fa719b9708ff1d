"""GSQ tokenizer training: `accelerate launch train/main.py --config train/configs/NAME.yaml ...`."""
