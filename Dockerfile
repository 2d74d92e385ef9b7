# The serve example as a container image: a release build in a Rust image, then only the
# binary and the weights in a slim Debian image, run as a non-root user.
#
#   docker build -t fastai-serve .                                   # the shipped ViT-tiny weights
#   docker build -t fastai-serve --build-arg WEIGHTS=path/in/context/model.safetensors .
#   docker run --rm -p 8080:8080 fastai-serve
#   docker run --rm -p 8080:8080 -v "$PWD/my.safetensors:/models/model.safetensors:ro" fastai-serve
#
# Extra serve flags go after the image name (they replace CMD), e.g.
#   docker run --rm -p 8080:8080 fastai-serve --addr 0.0.0.0:8080 --weights /models/model.safetensors --max-batch 16
#
# The base images are build arguments so that a registry mirror or a locally imported base can
# stand in (see examples/serve/README.md): RUST_IMAGE needs cargo >= 1.89 and a C toolchain.
ARG RUST_IMAGE=rust:1-slim-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

FROM ${RUST_IMAGE} AS build
WORKDIR /src
# The manifest and lock file first, so that the dependencies are cached apart from the sources.
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY examples ./examples
COPY benches ./benches
# The page's example images are compiled into the binary.
COPY tests/fixtures/images ./tests/fixtures/images
COPY weights ./weights
RUN cargo build --release --locked --example serve \
 && cp target/release/examples/serve /usr/local/bin/serve \
 && strip /usr/local/bin/serve

FROM ${RUNTIME_IMAGE}
# The weights baked into the image (a path inside the build context); mount a file over
# /models/model.safetensors at run time to serve other weights without rebuilding.
ARG WEIGHTS=weights/pets_vit_tiny.safetensors
COPY --from=build /usr/local/bin/serve /usr/local/bin/serve
COPY --chown=root:root ${WEIGHTS} /models/model.safetensors
# A numeric non-root user (no passwd entry needed, so the stage has no RUN step); it can read
# the binary and the weights, and write nothing it does not need to.
USER 10001:10001
EXPOSE 8080
# Liveness through bash's /dev/tcp (the slim image has no curl): GET /health must answer 200.
HEALTHCHECK --interval=15s --timeout=3s --start-period=30s --retries=3 \
  CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/8080 && printf 'GET /health HTTP/1.0\\r\\n\\r\\n' >&3 && head -n 1 <&3 | grep -q ' 200 '"]
ENTRYPOINT ["/usr/local/bin/serve"]
CMD ["--addr", "0.0.0.0:8080", "--weights", "/models/model.safetensors"]
