"""Model families, one file each; sizes from the papers' tables, width-scalable."""
