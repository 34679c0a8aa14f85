import os
import sys


def handler(event, context):
    return {
        "from_image": True,
        "cwd": os.getcwd(),
        "python": f"{sys.version_info.major}.{sys.version_info.minor}",
        "image_env": os.environ.get("IMAGE_SETTING"),
        "function": context.function_name,
        "event": event,
    }
