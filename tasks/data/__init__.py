"""From a dataset source to prepared images: download, archives, layouts, preprocessing, split."""
