# The bus for docker-compose.yml; the jar broker of `gemeentebus kafka up` is not needed here.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml constraints.txt README.md ./
COPY streams streams
COPY connectors connectors
COPY schemas schemas
# A plain install: the wheel carries the schemas (streams/contract/avro links to schemas/avro).
RUN pip install --no-cache-dir -c constraints.txt . \
 && useradd --system --no-create-home gemeentebus
USER gemeentebus
EXPOSE 8080
CMD ["gemeentebus", "run"]
