"""Expected failures: each carries a message a user can act on without a traceback."""


class PipelineError(Exception):
    """Base for failures caused by input, data or environment rather than by a bug."""


class ConfigError(PipelineError, ValueError):
    """A configuration value is invalid."""


class DownloadError(PipelineError):
    """Fetching the archive failed. `transient` says whether trying again may help."""

    def __init__(self, message: str, *, transient: bool = False):
        super().__init__(message)
        self.transient = transient


class ChecksumMismatch(DownloadError):
    def __init__(self, source: str, expected: str, actual: str, *, transient: bool = False):
        super().__init__(
            f"checksum mismatch for {source}: expected md5 {expected}, got {actual}; "
            "nothing was cached. If this is a different copy of CIFAR-10 on purpose, "
            "pass its md5 (--md5 / CIFAR_PIPELINE_MD5).",
            transient=transient,
        )
        self.source, self.expected, self.actual = source, expected, actual


class ArchiveError(PipelineError):
    """The archive is unsafe to extract or does not hold CIFAR-10."""


class IntegrityError(PipelineError):
    """A cached file no longer matches the digest recorded when it was written."""


class TrainingDiverged(PipelineError):
    """The loss became NaN or infinite."""


class ImageError(PipelineError):
    """An image file cannot be used: empty, corrupt, truncated, not an image, 16-bit or too large.

    `reason` is a short fixed phrase (for error rows and counts); the message also names the file.
    """

    def __init__(self, path: object, reason: str, detail: str = ""):
        super().__init__(f"{path}: {reason}" + (f" ({detail})" if detail else ""))
        self.path, self.reason, self.detail = str(path), reason, detail


class BadImagesError(PipelineError):
    """Extra training images that cannot be used, with bad_images = fail."""

    def __init__(self, problems: list[str]):
        super().__init__(
            f"{len(problems)} bad extra image file(s); nothing was cached (set bad_images to skip, "
            "--bad-images skip, to leave them out): " + "; ".join(problems)
        )
        self.problems = problems


class ExportError(PipelineError):
    """Exporting a model (ONNX, torch.export) or checking the export failed."""
