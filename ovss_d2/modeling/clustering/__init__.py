"""Pixel clustering for ViL-Seg: the online clustering head (:mod:`.online_head`) trained with IIC's
mutual-information objective (:mod:`.iic`), cluster-averaged region features (:mod:`.region_features`),
and the K-means alternative of the paper's ablation (:mod:`.kmeans`)."""
from .iic import iic_joint_distribution, iic_loss, mutual_information, undo_hflip
from .kmeans import kmeans
from .online_head import OnlineClusteringHead
from .region_features import cluster_average

__all__ = ["OnlineClusteringHead", "cluster_average", "iic_joint_distribution", "iic_loss", "kmeans",
           "mutual_information", "undo_hflip"]
