"""Data: deterministic synthetic phantoms, scikit-image's bundled images, the four tasks'
(x, y, operator) datasets, image folders (PNG/NPY), DICOM files and fastMRI / LoDoPaB-CT HDF5
files."""
from .dicom import read_dicom
from .folders import read_folder, read_image
from .h5 import FastMRISlices, LoDoPaB, read_h5, read_h5_generic, read_h5_images
from .images import read_images
from .phantoms import (disk, random_ellipses, shepp_logan, smooth_fields, smooth_phase,
                       textured_ellipses)
from .real import evaluate_real, real_scan_files, real_scans
from .tasks import (SPLITS, TASKS, TaskConfig, TaskData, build_operator, bundled_images,
                    cartesian_mask, fit_images, ground_truth, make_task, measure,
                    radial_trajectory, with_phase)

__all__ = ["random_ellipses", "disk", "shepp_logan", "read_image", "read_folder", "read_dicom",
           "FastMRISlices", "LoDoPaB", "read_h5_images", "TASKS", "SPLITS", "TaskConfig",
           "TaskData", "make_task", "build_operator", "ground_truth", "bundled_images",
           "cartesian_mask", "radial_trajectory", "read_images", "read_h5", "read_h5_generic",
           "fit_images", "measure", "textured_ellipses", "smooth_fields", "smooth_phase",
           "with_phase", "real_scans", "real_scan_files", "evaluate_real"]
