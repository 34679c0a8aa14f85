VALUE = "from the zip layer"
