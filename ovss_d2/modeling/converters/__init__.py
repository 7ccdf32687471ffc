"""Converters from the official checkpoint layouts of the methods to ovss-d2's, registered with
the checkpointer (``ovss_d2.checkpoint``) so released weights load as they are."""
from .common import UnmappedKeyError, rename_keys
from .err_seg import convert_err_seg_official, is_err_seg_official
from .sed import convert_sed_official, is_sed_official

__all__ = ["UnmappedKeyError", "rename_keys", "convert_sed_official", "is_sed_official",
           "convert_err_seg_official", "is_err_seg_official"]
