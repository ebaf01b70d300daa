"""An example of a plugin that lives outside nebula-xr: installed with pip, named in oned.conf."""
