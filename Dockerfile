# A bucketstream worker. Build: docker build -t bucketstream .
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY bucketstream ./bucketstream
RUN pip install --no-cache-dir .
ENV BUCKETSTREAM_WEB_HOST=0.0.0.0 \
    BUCKETSTREAM_DATA_DIR=/data
VOLUME /data
EXPOSE 6066
ENTRYPOINT ["bucketstream", "worker"]
