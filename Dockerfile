# The bot worker. Production points it at real Postgres and Redis (see docker-compose.yml).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    HTTP_HOST=0.0.0.0

RUN useradd --create-home --uid 10001 bot
WORKDIR /app

COPY pyproject.toml README.md alembic.ini ./
COPY alembic ./alembic
COPY bot ./bot
RUN pip install -e .

USER bot
EXPOSE 8080
ENTRYPOINT ["bot"]
CMD ["run"]
