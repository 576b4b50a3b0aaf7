# wstun-server and wstun-client in one small image.
#
#   docker build -t wstun .
#   docker run --rm wstun wstun-server --help
#
# Stage 1 builds a virtualenv with the project and its dependencies (from
# wheels); stage 2 copies just that virtualenv onto a clean slim Python and
# runs as an unprivileged user. Python 3.11: the version the test suite and
# the benchmarks run on.

FROM python:3.11-slim AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY common ./common
COPY client ./client
COPY server ./server
# Dependencies come as wheels (uvloop included), so no compiler is needed;
# pip itself is removed from the virtualenv once the project is in.
RUN python -m venv /opt/wstun \
    && /opt/wstun/bin/pip install --prefer-binary . \
    && /opt/wstun/bin/pip uninstall --yes pip

FROM python:3.11-slim
RUN useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin wstun
COPY --from=build /opt/wstun /opt/wstun
ENV PATH=/opt/wstun/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 10001:10001
EXPOSE 8080
# Compose sets the real command; the default prints the server's options.
CMD ["wstun-server", "--help"]
