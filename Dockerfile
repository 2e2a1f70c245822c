FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY signaling ./signaling
COPY voice ./voice
COPY wire ./wire
RUN pip install --no-cache-dir .
# Signaling on 8080. Media (UDP) binds ANRUF_MEDIA_BIND_ADDRESS: set it to the
# container's address and ANRUF_MEDIA_ANNOUNCE_ADDRESS to the public one; run with
# host networking or publish the media ports.
ENV ANRUF_HOST=0.0.0.0 \
    ANRUF_DATA_DIR=/data
VOLUME /data
EXPOSE 8080
CMD ["anruf", "serve"]
