# GPU image for training: the CUDA PyTorch image that matches Composer 0.32.1's supported torch (2.7.0).
#
#   docker build -t rlp-pretrain .
#   docker run --gpus all --ipc=host -e S3_ENDPOINT_URL -e AWS_ACCESS_KEY_ID -e AWS_SECRET_ACCESS_KEY \
#       rlp-pretrain composer -n 8 -m rlp.train recipes/qwen3-1.7b-rlp.yaml
#
# --ipc=host (or a large --shm-size): streaming and the DataLoader workers use /dev/shm, which is 64 MB by default.
# torch/torchvision come from the base image and are never replaced: composer and streaming are installed
# without their dependency pins (the same path as `make install-keep-torch`; streaming 0.13.0's metadata also pins
# transformers<5, and this image runs transformers 5.23.0), everything else from requirements/keep-torch.txt.
FROM pytorch/pytorch:2.7.0-cuda12.6-cudnn9-runtime

ENV PYTHONUNBUFFERED=1 \
    TOKENIZERS_PARALLELISM=false \
    PIP_NO_CACHE_DIR=1

WORKDIR /workspace/rlp
COPY requirements/keep-torch.txt requirements/keep-torch.txt
RUN python -c "import torch, torchvision; print('base torch', torch.__version__, torchvision.__version__)" \
 && pip install -r requirements/keep-torch.txt \
 && pip install --no-deps mosaicml==0.32.1 mosaicml-streaming==0.13.0

COPY pyproject.toml README.md ./
COPY pipeline pipeline
COPY rlp rlp
COPY recipes recipes
RUN pip install --no-deps . \
 && python -c "import composer, streaming, torch, rlp.train; print('composer', composer.__version__, 'torch', torch.__version__)" \
 && composer --help > /dev/null

CMD ["python", "-m", "rlp.train", "--help"]
