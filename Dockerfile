# A labelmesh node in a container (docs/operations.md, "In a container"). Not built by CI.
#
#   docker build -t labelmesh .
#   docker run --rm -v lm-data:/data labelmesh init --data-dir /data --genesis /data/genesis.json \
#       --listen /ip4/0.0.0.0/tcp/4001 --bootstrap /ip4/…/tcp/…/p2p/12D3KooW…   # once (copy genesis.json into the volume first)
#   docker run -d --name lm -v lm-data:/data -p 4001:4001 labelmesh            # the node, in the foreground of the container
#   docker exec lm labelmesh status --data-dir /data                          # talk to it over its RPC socket
#   docker stop lm                                                             # SIGTERM: a clean stop
FROM python:3.11-slim

# the node runs as an unprivileged user; its data dir (keys, store, RPC socket) is a volume
RUN useradd --system --create-home --home-dir /home/labelmesh labelmesh \
 && mkdir /data && chown labelmesh:labelmesh /data && chmod 0700 /data

WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY protocol ./protocol
COPY node ./node
COPY devtools ./devtools
RUN pip install --no-cache-dir . && rm -rf /src

USER labelmesh
ENV LABELMESH_DATA_DIR=/data
VOLUME ["/data"]
EXPOSE 4001
STOPSIGNAL SIGTERM
ENTRYPOINT ["labelmesh"]
CMD ["run", "--data-dir", "/data"]
