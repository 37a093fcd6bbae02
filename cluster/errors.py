"""The error types the CLI and API turn into a one-line message (never a traceback)."""


class ShardqaError(RuntimeError):
    """A failure with a one-line message meant for the user.

    ``exit_code`` is what the CLI exits with; ``http_status`` what the API answers.
    """

    exit_code = 1
    http_status = 500

    def __init__(self, message: str, *, exit_code: int | None = None,
                 http_status: int | None = None):
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code
        if http_status is not None:
            self.http_status = http_status


class ClusterError(ShardqaError):
    """The cluster could not be started, stopped or reached."""

    http_status = 503
