# The project on the same base as the broker images: one example service per container
# (`python -m reference_services.deploy microservice --service NAME`). Built by
# `harness images build service`, which puts the wheels of the project, of every built-in
# adapter's client (the `adapters` extra), of the OpenTelemetry SDK (`telemetry`) and of
# their dependencies (pip wheel on the host) into the build context: no index is reached here.
ARG BASE=purista-harness/debian:bookworm
FROM ${BASE}
RUN apt-get update -q \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends python3 python3-venv \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin
COPY wheels /tmp/wheels
RUN python3 -m venv /opt/purista \
 && /opt/purista/bin/pip install -q --no-index --find-links /tmp/wheels 'purista-conformance[adapters,telemetry]' \
 && rm -rf /tmp/wheels \
 && /opt/purista/bin/python -c 'import reference_services.deploy, opentelemetry.sdk.trace' \
 && /opt/purista/bin/python -c 'from reference_services.adapters.registry import builtin; [d.load() for d in builtin()]'
ENV PATH=/opt/purista/bin:$PATH PYTHONUNBUFFERED=1 HEALTH_HOST=0.0.0.0
USER nobody
ENTRYPOINT ["python", "-m", "reference_services.deploy"]
CMD ["microservice", "--service", "user"]
