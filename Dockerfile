# prefect-gitops control image: the reconcile / rollback / promote flows (see prefect.yaml).
#
#   docker build -t prefect-gitops:dev .
#   docker run --rm prefect-gitops:dev                       # prefect-gitops --help
#
# Two stages: the builder builds the wheel and installs it with the exact pins of constraints.txt into
# /opt/venv; the final image gets only that venv, git (the flows fetch the GitOps repo with it)
# and the flow entrypoints, and runs as an unprivileged user. No secrets are baked in:
# PREFECT_API_URL / PREFECT_API_KEY come from the worker or the CI job at run time.

# ---------------------------------------------------------------------------------------------
FROM python:3.11.14-slim-bookworm AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src
# constraints.txt pins every dependency (and `build`); README.md, LICENSE and CHANGELOG.md go into the
# package. The image gets the wheel users get (python -m build: sdist, then the wheel from it), installed
# with the same pins, not the source tree.
COPY pyproject.toml constraints.txt constraints-latest.txt MANIFEST.in README.md LICENSE CHANGELOG.md ./
COPY src/ ./src/
RUN pip install --no-cache-dir -c constraints.txt build \
    && python -m build --outdir /dist . \
    && pip install --no-cache-dir -c constraints.txt /dist/prefect_gitops-*.whl \
    && pip uninstall --yes build pyproject_hooks

# ---------------------------------------------------------------------------------------------
# same base as the builder: the venv's interpreter symlinks point at its /usr/local/bin/python3.11
FROM python:3.11.14-slim-bookworm AS final

# git only (no compilers, no build tools), with gpg and ssh-keygen (openssh-client) for sources that
# verify signed commits (verify_signatures). Not version-pinned on purpose: the base image tag is
# pinned, and Debian bookworm's security updates replace the git package version in the archive,
# which would make an exact `git=<version>` pin stop resolving.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends git gpg openssh-client \
    && apt-get clean \
    && rm -rf /var/lib/apt/lists/*

# a fixed, unprivileged UID/GID so Kubernetes securityContext (runAsUser/runAsNonRoot) can match it
RUN groupadd --system --gid 10001 prefect \
    && useradd --system --uid 10001 --gid 10001 --create-home --home-dir /home/prefect \
        --shell /usr/sbin/nologin prefect

COPY --from=builder /opt/venv /opt/venv

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PREFECT_HOME=/home/prefect/.prefect

# the flow entrypoints and block types, where prefect.yaml's pull step expects them
WORKDIR /opt/prefect/flows
COPY flows/ ./flows/
COPY blocks/ ./blocks/

USER 10001:10001

CMD ["prefect-gitops", "--help"]
