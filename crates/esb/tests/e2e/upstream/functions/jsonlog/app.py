"""LoggingConfig JSON at WARN: only WARN and above reach the log, as JSON records."""
import logging

logger = logging.getLogger()


def handler(event, context):
    tag = event.get("tag", "none")
    logger.debug("jsonlog debug %s", tag)
    logger.info("jsonlog info %s", tag)
    logger.warning("jsonlog warning %s", tag)
    logger.error("jsonlog error %s", tag)
    return {"tag": tag}
