# idle-supervisor as a container image: docs/container.md (build, `docker run --env-file`, stop).
#
# The base is a build argument so that a locally made image can stand in for the registry one
# (tests/deploy/test_container.py builds on a debootstrapped Debian): any Debian-like image with
# python3 >= 3.11 and its venv module works.
ARG BASE_IMAGE=python:3.11-slim-bookworm
FROM ${BASE_IMAGE}

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PATH=/opt/idle-supervisor/bin:$PATH

# The package from this checkout (see .dockerignore), in its own venv: no extras, exactly what
# `pip install .` gives. The source is removed again; only the installed package stays.
COPY . /src
RUN python3 -m venv /opt/idle-supervisor \
 && /opt/idle-supervisor/bin/pip install /src \
 && rm -rf /src \
 && useradd --no-create-home --uid 10001 --user-group --home-dir /data --shell /usr/sbin/nologin idle \
 && install -d -o idle -g idle -m 0700 /data

# Not root: the supervisor needs no privilege (it only connects out and writes its state).
USER idle
# With no config file, relative paths resolve here: status, pid file, checkpoints in /data/state.
WORKDIR /data
VOLUME ["/data"]

# SIGTERM is the clean stop (every mailbox: DONE + LOGOUT within shutdown_timeout). Give the
# runtime's stop timeout more than that: `docker stop -t 20`.
STOPSIGNAL SIGTERM
# `status` exits 0 while the supervisor runs, non-zero otherwise; folded to 1 (Docker reserves 2).
HEALTHCHECK --interval=30s --timeout=10s --start-period=30s --retries=3 \
    CMD ["sh", "-c", "idle-supervisor status > /dev/null || exit 1"]

# Exec form, no shell: the supervisor is PID 1, gets SIGTERM itself and reaps orphans.
ENTRYPOINT ["idle-supervisor"]
CMD ["run"]
