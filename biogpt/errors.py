"""The exceptions users of `biogpt` catch: one family per kind of problem, each with an actionable message."""


class BioGptError(Exception):
    """Base class of every error this library raises on purpose."""


class CheckpointError(BioGptError):
    """A checkpoint cannot be found, read or matched to the model (missing file, bad shape, corrupt data, no network)."""


class ConfigError(BioGptError, ValueError):
    """A configuration value is invalid; the message names the field."""


class GenerationParameterError(BioGptError, ValueError):
    """A generation/decoding parameter is out of range or of the wrong type; the message names the parameter."""


class DeviceError(BioGptError):
    """The requested device, dtype, attention backend or quantization cannot run on this machine."""


class InputError(BioGptError, ValueError):
    """A text sent by a user is unusable (wrong type, invalid encoding, empty, too long); the message says why."""
