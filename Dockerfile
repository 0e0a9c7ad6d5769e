# One image for both sides: `tsched server` and `tsched agent` (see docker-compose.yml).
FROM python:3.12-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install --no-cache-dir . && useradd --create-home tsched && mkdir /data && chown tsched /data
USER tsched
ENTRYPOINT ["tsched"]
CMD ["--help"]
