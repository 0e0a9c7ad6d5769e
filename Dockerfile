# One image for both sides: `tsched server` and `tsched agent` (see docker-compose.yml,
# docker-compose.postgres.yml and deploy/kubernetes).
FROM python:3.12-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY src ./src
# uid 1000, which deploy/kubernetes runs as (runAsNonRoot needs a numeric user to check)
RUN pip install --no-cache-dir . && useradd --create-home --uid 1000 tsched && mkdir /data \
    && chown tsched /data
USER 1000:1000
ENTRYPOINT ["tsched"]
CMD ["--help"]
