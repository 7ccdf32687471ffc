from .sed_decoder import SEDDecoder

__all__ = ["SEDDecoder"]
