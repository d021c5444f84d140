from api.app import create_app
from shared.logging import configure_logging
from shared.settings import get_settings

configure_logging(get_settings().log_format)
app = create_app()
