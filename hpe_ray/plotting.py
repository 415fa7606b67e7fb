"""Figures: predicted vs ground-truth 3D skeletons, UMAP of the shared latent space, errors per
joint and per action.

Figures are built on `matplotlib.figure.Figure` with the Agg canvas, never pyplot, so importing
this module changes no global backend and works in Ray workers and headless machines. An
output path without a .png/.pdf suffix is a stem: both files are written.

Skeletons are drawn in the camera frame with height up: display (x, depth, up) = camera
(x, z, -y), so the default view looks at the person from slightly above and to the side,
where depth errors (the hard part of lifting) are visible.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib import rc_context
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from hpe_ray.metrics import pa_mpjpe, per_action_table, per_joint_error
from hpe_ray.skeleton import BONES, JOINT_NAMES, LEFT_JOINTS, NUM_JOINTS, RIGHT_JOINTS

LEFT_COLOR = "#1f6fd1"
RIGHT_COLOR = "#e0402a"
CENTRE_COLOR = "#5b5b70"
GT_COLOR = "#9a9a9a"
ERROR_CMAP = "viridis"
MODALITY_MARKERS = {"pose2d": "o", "rgb": "^", "pose3d": "s"}
MODALITY_LABELS = {"pose2d": "2D-pose encoder", "rgb": "RGB encoder", "pose3d": "3D-pose encoder"}
DEFAULT_VIEW = (12.0, -62.0)  # (elevation, azimuth) in degrees
AVERAGE = "Average"  # the row metrics.per_action_table adds


def save_figure(fig: Figure, out_path: str | Path, dpi: int = 110) -> list[Path]:
    """Write `fig` to out_path (.png or .pdf), or to out_path.png and out_path.pdf for a stem."""
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    if out_path.suffix.lower() in (".png", ".pdf"):
        paths = [out_path]
    else:
        paths = [out_path.with_name(out_path.name + ".png"), out_path.with_name(out_path.name + ".pdf")]
    FigureCanvasAgg(fig)
    for path in paths:
        fig.savefig(path, dpi=dpi)
    return paths


def figure_to_image(fig: Figure, dpi: int = 80) -> np.ndarray:
    """Render `fig` to an (H, W, 3) uint8 RGB array (for TensorBoard's image tab)."""
    canvas = FigureCanvasAgg(fig)
    fig.set_dpi(dpi)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


# ---------------------------------------------------------------- skeletons

def _bone_color(child: int) -> str:
    if child in LEFT_JOINTS:
        return LEFT_COLOR
    if child in RIGHT_JOINTS:
        return RIGHT_COLOR
    return CENTRE_COLOR


_BONE_COLORS = [_bone_color(child) for _, child in BONES]


def camera_to_display(pose_3d_cam_mm: np.ndarray) -> np.ndarray:
    """Camera frame (x right, y down, z forward) -> display axes (x, depth, up): (..., 3) -> (..., 3)."""
    return np.stack([pose_3d_cam_mm[..., 0], pose_3d_cam_mm[..., 2], -pose_3d_cam_mm[..., 1]], axis=-1)


def _draw_skeletons(ax, poses_display: np.ndarray, *, colors: Sequence[str] | str, linewidth: float,
                    alpha: float = 1.0, zorder: float = 1.0, linestyles: Sequence[str] | str = "solid"):
    """Bones of display-frame poses (..., 17, 3) on 3D axes, or of image poses (..., 17, 2) on 2D
    axes, as one collection (thousands of separate lines would take most of a figure's drawing
    time); colors and linestyles: one, or one per bone of BONES. Returns the collection."""
    from matplotlib.collections import LineCollection
    from mpl_toolkits.mplot3d.art3d import Line3DCollection

    dims = poses_display.shape[-1]
    poses_display = poses_display.reshape(-1, NUM_JOINTS, dims)
    parents, children = [p for p, _ in BONES], [c for _, c in BONES]
    segments = np.stack([poses_display[:, parents], poses_display[:, children]], axis=2).reshape(-1, 2, dims)
    bone_colors = [colors] * len(BONES) if isinstance(colors, str) else list(colors)
    bone_styles = [linestyles] * len(BONES) if isinstance(linestyles, str) else list(linestyles)
    style = dict(colors=bone_colors * len(poses_display), linestyles=bone_styles * len(poses_display),
                 linewidths=linewidth, alpha=alpha, capstyle="round", zorder=zorder)
    if dims == 3:
        collection = Line3DCollection(segments, **style)
        ax.add_collection3d(collection)
    else:
        collection = LineCollection(segments, **style)
        ax.add_collection(collection, autolim=False)
    return collection


def _pose_panel(ax, pred_mm: np.ndarray, gt_mm: np.ndarray, hypotheses_mm: np.ndarray | None,
                error_norm: Normalize, half_range_mm: float, title: str, view: tuple[float, float]) -> None:
    """One sample: faint hypotheses, grey ground truth, coloured prediction with joints coloured by error."""
    joint_errors_mm = per_joint_error(pred_mm, gt_mm)
    # Layers in a fixed order (hypotheses, truth, prediction, joints) instead of matplotlib's
    # depth sort of whole collections, which would let the truth hide the prediction.
    ax.computed_zorder = False
    if hypotheses_mm is not None:
        _draw_skeletons(ax, camera_to_display(hypotheses_mm), colors=_BONE_COLORS, linewidth=0.8, alpha=0.22)
    gt_display = camera_to_display(gt_mm)
    _draw_skeletons(ax, gt_display, colors=GT_COLOR, linewidth=4.0, alpha=0.75, zorder=2)
    pred_display = camera_to_display(pred_mm)
    _draw_skeletons(ax, pred_display, colors=_BONE_COLORS, linewidth=2.0, zorder=3)
    ax.scatter(pred_display[:, 0], pred_display[:, 1], pred_display[:, 2], c=joint_errors_mm,
               cmap=ERROR_CMAP, norm=error_norm, s=8 + 30 * error_norm(joint_errors_mm).clip(0, 1),
               edgecolors="black", linewidths=0.3, depthshade=False, zorder=4)
    worst = int(np.argmax(joint_errors_mm))
    ax.text(*pred_display[worst], f"  {joint_errors_mm[worst]:.0f}", fontsize=7, color="black", zorder=5)
    ax.text2D(0.5, 0.99, f"{title}\nMPJPE {joint_errors_mm.mean():.1f} mm", transform=ax.transAxes,
              ha="center", va="top", fontsize=8.5)
    # Centred on the pair's bounding box with a shared half range: panels share one scale.
    both = np.concatenate([gt_display, pred_display])
    _frame_3d_axes(ax, 0.5 * (both.min(0) + both.max(0)), half_range_mm, view)


def _frame_3d_axes(ax, centre_display: np.ndarray, half_range_mm: float, view: tuple[float, float]) -> None:
    """A cube of half_range_mm around centre_display (display frame), seen from `view`; no tick
    labels, light panes."""
    for set_lim, centre in zip((ax.set_xlim, ax.set_ylim, ax.set_zlim), centre_display):
        set_lim(centre - half_range_mm, centre + half_range_mm)
    ax.set_box_aspect((1, 1, 1), zoom=1.12)
    ax.view_init(elev=view[0], azim=view[1])
    ax.set_xticklabels([])
    ax.set_yticklabels([])
    ax.set_zticklabels([])
    ax.tick_params(length=0)
    for axis in (ax.xaxis, ax.yaxis, ax.zaxis):
        axis.set_pane_color((0.96, 0.96, 0.96, 1.0))


def predictions_plot(pred_mm, gt_mm, *, hypotheses_mm=None, titles: Sequence[str] | None = None,
                     columns: int = 5, view: tuple[float, float] = DEFAULT_VIEW,
                     panel_inches: float = 2.7) -> Figure:
    """The figure of `plot_predictions` (see there), not saved."""
    pred_mm, gt_mm = np.asarray(pred_mm, np.float64), np.asarray(gt_mm, np.float64)
    if pred_mm.ndim != 3 or pred_mm.shape[1:] != (NUM_JOINTS, 3) or gt_mm.shape != pred_mm.shape:
        raise ValueError(f"pred_mm and gt_mm must both be (N, {NUM_JOINTS}, 3), got {pred_mm.shape} and {gt_mm.shape}")
    count = len(pred_mm)
    if count == 0:
        raise ValueError("no poses to plot")
    if hypotheses_mm is not None:
        hypotheses_mm = np.asarray(hypotheses_mm, np.float64)
        if hypotheses_mm.ndim != 4 or hypotheses_mm.shape[0] != count or hypotheses_mm.shape[2:] != (NUM_JOINTS, 3):
            raise ValueError(f"hypotheses_mm must be ({count}, K, {NUM_JOINTS}, 3), got {hypotheses_mm.shape}")
    titles = list(titles) if titles is not None else [f"sample {i}" for i in range(count)]
    if len(titles) != count:
        raise ValueError(f"need one title per pose: {count} poses, {len(titles)} titles")

    joint_errors_mm = per_joint_error(pred_mm, gt_mm)
    # One colour scale for the whole grid, so colours compare across panels; the 98th
    # percentile keeps one wild joint from washing out the rest.
    error_norm = Normalize(0.0, max(float(np.percentile(joint_errors_mm, 98)), 1.0))
    # One scale for all panels too: a pose that looks smaller is smaller.
    extent_mm = np.maximum(pred_mm.max(1), gt_mm.max(1)) - np.minimum(pred_mm.min(1), gt_mm.min(1))
    half_range_mm = 0.55 * float(max(extent_mm.max(), 1.0))  # 10 % margin: the 3D box's corners are cropped

    columns = min(columns, count)
    rows = -(-count // columns)
    header_inches = 0.7  # legend line + summary line above the grid
    fig = Figure(figsize=(panel_inches * columns + 1.1, panel_inches * rows + header_inches))
    for i in range(count):
        with rc_context({"grid.color": "#d9d9d9"}):  # 3D axes read their grid colour when created
            ax = fig.add_subplot(rows, columns, i + 1, projection="3d")
        _pose_panel(ax, pred_mm[i], gt_mm[i], None if hypotheses_mm is None else hypotheses_mm[i],
                    error_norm, half_range_mm, titles[i], view)
    fig.subplots_adjust(left=0.0, right=1 - 1.1 / fig.get_figwidth(), bottom=0.0,
                        top=1 - header_inches / fig.get_figheight(), wspace=0.0, hspace=0.05)

    handles = [Line2D([], [], color=GT_COLOR, linewidth=4.0, alpha=0.75, label="ground truth"),
               Line2D([], [], color=LEFT_COLOR, linewidth=2.0, label="prediction, left limbs"),
               Line2D([], [], color=RIGHT_COLOR, linewidth=2.0, label="prediction, right limbs")]
    if hypotheses_mm is not None:
        handles.append(Line2D([], [], color=CENTRE_COLOR, linewidth=0.8, alpha=0.4,
                              label=f"{hypotheses_mm.shape[1]} sampled hypotheses"))
    fig.legend(handles=handles, loc="upper center", ncol=len(handles), frameon=False, fontsize=9,
               bbox_to_anchor=(0.5, 1.0))
    fig.text(0.5, 1 - 0.38 / fig.get_figheight(),
             f"mean MPJPE of these {count}: {joint_errors_mm.mean():.1f} mm   |   joint colour: its error; "
             "number: the worst joint's error (mm)", ha="center", va="top", fontsize=9, color="#333333")
    colorbar_axes = fig.add_axes((1 - 0.95 / fig.get_figwidth(), 0.25, 0.14 / fig.get_figwidth(), 0.5))
    fig.colorbar(ScalarMappable(norm=error_norm, cmap=ERROR_CMAP), cax=colorbar_axes,
                 label="joint error (mm)", extend="max")
    return fig


def plot_predictions(pred_mm, gt_mm, out_path: str | Path, *, hypotheses_mm=None,
                     titles: Sequence[str] | None = None, columns: int = 5,
                     view: tuple[float, float] = DEFAULT_VIEW) -> list[Path]:
    """Grid of predicted and ground-truth 3D skeletons, one panel per sample; returns the files written.

    pred_mm, gt_mm (N, 17, 3) root-relative camera-frame mm; hypotheses_mm (N, K, 17, 3) sampled
    poses drawn faintly behind the mean, or None; titles (N,) e.g. actions. The prediction's
    joints are coloured (and sized) by their error on one scale for the grid; the worst
    joint's error is written next to it, the sample's MPJPE in its title.
    """
    return save_figure(predictions_plot(pred_mm, gt_mm, hypotheses_mm=hypotheses_mm, titles=titles,
                                        columns=columns, view=view), out_path)


def render_predictions_image(pred_mm, gt_mm, *, hypotheses_mm=None, titles: Sequence[str] | None = None,
                             columns: int = 4, dpi: int = 72) -> np.ndarray:
    """`plot_predictions` as an (H, W, 3) uint8 image, e.g. for SummaryWriter.add_image(dataformats="HWC")."""
    return figure_to_image(predictions_plot(pred_mm, gt_mm, hypotheses_mm=hypotheses_mm, titles=titles,
                                            columns=columns), dpi=dpi)


# ---------------------------------------------------------------- sequences

LOW_CONFIDENCE_COLOR = "#9a9a9a"
ANIMATION_SIZE_PX = (960, 480)
_JOINT_COLORS = np.array([_bone_color(j) for j in range(NUM_JOINTS)])
_BONE_PARENTS = np.array([p for p, _ in BONES])
_BONE_CHILDREN = np.array([c for _, c in BONES])


def sequence_frames(keypoints_2d_px, poses_mm, *, low_confidence=None, hypotheses_mm=None, frames=None,
                    image_size_px=None, title: str = "", size_px: tuple[int, int] = ANIMATION_SIZE_PX,
                    view: tuple[float, float] = DEFAULT_VIEW) -> Iterator[np.ndarray]:
    """The frames of a lifted sequence, drawn one at a time on one figure: (H, W, 3) uint8 RGB
    arrays of size_px (width, height), one per pose.

    Left: the 2D input keypoints_2d_px (T, 17, 2), image pixels with y down; joints flagged in
    low_confidence (T, 17) (scored low or missing, filled from neighbouring frames) are hollow
    and grey, their bones dashed. Right: the 3D mean pose poses_mm (T, 17, 3), root-relative
    camera-frame mm, as the skeleton, upright (see `camera_to_display`), with hypotheses_mm
    (T, K, 17, 3) drawn faintly around it; a pose with NaN (not lifted) is left out and said so.
    Both panels keep one view for the whole sequence: the 2D one the keypoints' extent (within
    the frame when image_size_px (width, height) is given, its edge dotted), the 3D one a box
    fitting the mean poses. frames (T,): frame numbers for the title (default 0 .. T-1).
    """
    keypoints = np.asarray(keypoints_2d_px, np.float64)
    poses = np.asarray(poses_mm, np.float64)
    count = len(poses)
    if count == 0:
        raise ValueError("no frames to draw")
    if poses.shape[1:] != (NUM_JOINTS, 3) or keypoints.shape != (count, NUM_JOINTS, 2):
        raise ValueError(f"poses_mm must be (T, {NUM_JOINTS}, 3) and keypoints_2d_px (T, {NUM_JOINTS}, 2), got "
                         f"{poses.shape} and {keypoints.shape}")
    low = (np.zeros((count, NUM_JOINTS), bool) if low_confidence is None
           else np.asarray(low_confidence, bool))
    if low.shape != (count, NUM_JOINTS):
        raise ValueError(f"low_confidence must be ({count}, {NUM_JOINTS}), got {low.shape}")
    if hypotheses_mm is not None:
        hypotheses_mm = np.asarray(hypotheses_mm, np.float64)
        if hypotheses_mm.ndim != 4 or hypotheses_mm.shape[0] != count or hypotheses_mm.shape[2:] != (NUM_JOINTS, 3):
            raise ValueError(f"hypotheses_mm must be ({count}, K, {NUM_JOINTS}, 3), got {hypotheses_mm.shape}")
    frames = np.arange(count) if frames is None else np.asarray(frames)

    width_px, height_px = size_px
    fig = Figure(figsize=(width_px / 100, height_px / 100), dpi=100)
    canvas = FigureCanvasAgg(fig)
    ax_2d = fig.add_axes((0.07, 0.15, 0.40, 0.74))
    with rc_context({"grid.color": "#d9d9d9"}):  # 3D axes read their grid colour when created
        ax_3d = fig.add_axes((0.50, 0.09, 0.48, 0.82), projection="3d")
    _frame_2d_axes(ax_2d, keypoints, image_size_px)
    ax_3d.computed_zorder = False  # hypotheses, then the mean, then its joints
    lifted = np.all(np.isfinite(poses), axis=(1, 2))
    display = camera_to_display(poses[lifted])
    if len(display):
        extent = display.max(1) - display.min(1)
        half_range_mm = 0.55 * max(float(np.percentile(extent.max(1), 95)), 1.0)
        centre = np.median(0.5 * (display.max(1) + display.min(1)), axis=0)
    else:
        half_range_mm, centre = 1000.0, np.zeros(3)
    _frame_3d_axes(ax_3d, centre, half_range_mm, view)
    ax_2d.set_title("2D input (image px)", fontsize=9)
    kind = "mean" if hypotheses_mm is None else f"mean and {hypotheses_mm.shape[1]} hypotheses"
    ax_3d.text2D(0.5, 1.0, f"3D prediction ({kind}), mm", transform=ax_3d.transAxes, ha="center", va="bottom",
                 fontsize=9)
    handles = [Line2D([], [], color=LEFT_COLOR, linewidth=2.0, marker="o", markersize=4, label="left"),
               Line2D([], [], color=RIGHT_COLOR, linewidth=2.0, marker="o", markersize=4, label="right"),
               Line2D([], [], color=LOW_CONFIDENCE_COLOR, linewidth=1.5, linestyle="--", marker="o", markersize=5,
                      markerfacecolor="none", label="joint scored low or missing (filled from neighbouring frames)")]
    if hypotheses_mm is not None:
        handles.append(Line2D([], [], color=CENTRE_COLOR, linewidth=0.8, alpha=0.4, label="sampled hypotheses"))
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), frameon=False, fontsize=8,
               bbox_to_anchor=(0.5, 0.0))
    heading = fig.text(0.5, 0.99, "", ha="center", va="top", fontsize=10)

    artists: list = []
    for t in range(count):
        for artist in artists:
            artist.remove()
        xy, low_t = keypoints[t], low[t]
        bone_low = low_t[_BONE_PARENTS] | low_t[_BONE_CHILDREN]
        artists = [
            _draw_skeletons(ax_2d, xy, colors=np.where(bone_low, LOW_CONFIDENCE_COLOR, _BONE_COLORS).tolist(),
                            linewidth=2.0, linestyles=np.where(bone_low, "--", "-").tolist()),
            ax_2d.scatter(xy[~low_t, 0], xy[~low_t, 1], s=16, c=_JOINT_COLORS[~low_t].tolist(), edgecolors="white",
                          linewidths=0.5, zorder=3),
            ax_2d.scatter(xy[low_t, 0], xy[low_t, 1], s=36, facecolors="none", edgecolors=LOW_CONFIDENCE_COLOR,
                          linewidths=1.4, zorder=3)]
        if lifted[t]:
            if hypotheses_mm is not None and np.isfinite(hypotheses_mm[t]).all():
                artists.append(_draw_skeletons(ax_3d, camera_to_display(hypotheses_mm[t]), colors=_BONE_COLORS,
                                               linewidth=0.8, alpha=0.22))
            pose = camera_to_display(poses[t])
            artists.append(_draw_skeletons(ax_3d, pose, colors=_BONE_COLORS, linewidth=2.2, zorder=3))
            artists.append(ax_3d.scatter(pose[:, 0], pose[:, 1], pose[:, 2], s=10, depthshade=False, zorder=4,
                                         c=np.where(low_t, LOW_CONFIDENCE_COLOR, _JOINT_COLORS).tolist()))
        else:
            artists.append(ax_3d.text2D(0.5, 0.5, "not lifted", transform=ax_3d.transAxes, ha="center",
                                        color=CENTRE_COLOR))
        heading.set_text(f"{title}frame {frames[t]}   ({t + 1} of {count})")
        canvas.draw()
        yield np.asarray(canvas.buffer_rgba())[..., :3].copy()


def _frame_2d_axes(ax, keypoints_px: np.ndarray, image_size_px) -> None:
    """Image axes (y down, equal scale) around all the keypoints, kept within the frame when its
    size is known (unless keypoints lie outside it), the frame's edge dotted."""
    finite = keypoints_px[np.all(np.isfinite(keypoints_px), axis=-1)]
    lo, hi = (finite.min(0), finite.max(0)) if len(finite) else (np.zeros(2), np.ones(2))
    margin = 0.08 * float(np.max(hi - lo)) + 10.0
    view_lo, view_hi = lo - margin, hi + margin
    if image_size_px is not None:
        size = np.asarray(image_size_px, np.float64)
        view_lo, view_hi = np.maximum(view_lo, np.minimum(lo, 0.0)), np.minimum(view_hi, np.maximum(hi, size))
        from matplotlib.patches import Rectangle

        ax.add_patch(Rectangle((0, 0), size[0], size[1], fill=False, edgecolor="#b0b0b0", linewidth=0.8,
                               linestyle=":"))
    # Widen the shorter side about the centre to the axes' shape: one pixel is as tall as it is wide.
    box = ax.get_position()
    shape = box.height * ax.figure.get_figheight() / (box.width * ax.figure.get_figwidth())
    centre, span = 0.5 * (view_lo + view_hi), view_hi - view_lo
    span = np.maximum(span, [span[1] / shape, span[0] * shape])
    ax.set_xlim(centre[0] - span[0] / 2, centre[0] + span[0] / 2)
    ax.set_ylim(centre[1] + span[1] / 2, centre[1] - span[1] / 2)  # image y points down
    ax.set_aspect("equal", adjustable="box")
    ax.tick_params(labelsize=7)
    ax.grid(color="#ececec", linewidth=0.6)
    ax.set_axisbelow(True)


# ---------------------------------------------------------------- latent space

def _action_colors(actions: Sequence[str]) -> dict[str, tuple]:
    from matplotlib import colormaps

    names = sorted(set(actions))
    cmap = colormaps["tab20" if len(names) > 10 else "tab10"]
    return {name: cmap(i % cmap.N) for i, name in enumerate(names)}


def umap_neighbors(n_neighbors: Sequence[int], num_points: int) -> list[int]:
    """n_neighbors settings usable on num_points points: each clipped to num_points - 1, duplicates dropped."""
    clipped = [max(2, min(int(k), num_points - 1)) for k in n_neighbors]
    return list(dict.fromkeys(clipped))


def latent_umap_plot(latents: Mapping[str, np.ndarray], actions, *, n_neighbors: Sequence[int] = (5, 15, 50, 200),
                     max_points: int | None = 3000, seed: int = 0) -> Figure:
    """The figure of `plot_latent_umap` (see there), not saved."""
    import umap

    modalities = list(latents)
    if not modalities:
        raise ValueError("no latents to plot")
    arrays = [np.asarray(latents[m], np.float64) for m in modalities]
    actions = np.asarray([str(a) for a in actions])
    count = len(actions)
    for name, array in zip(modalities, arrays):
        if array.ndim != 2 or len(array) != count:
            raise ValueError(f"latents[{name!r}] must be (N, D) with N = {count} (one per action label), "
                             f"got {array.shape}")
    rng = np.random.default_rng(seed)
    # The same subsample for every modality, so an RGB point and a 2D point of one frame both stay.
    keep = np.arange(count)
    if max_points and count > max_points:
        keep = np.sort(rng.choice(count, max_points, replace=False))
    points = np.concatenate([array[keep] for array in arrays])
    point_actions = np.tile(actions[keep], len(modalities))
    point_modality = np.repeat(modalities, len(keep))
    if len(points) < 5:
        raise ValueError(f"UMAP needs at least 5 points, got {len(points)}")

    settings = umap_neighbors(n_neighbors, len(points))
    colors = _action_colors(point_actions)
    fig = Figure(figsize=(4.6 * len(settings) + 2.2, 4.9))
    for panel, k in enumerate(settings):
        # The spectral initialisation fails on the tiny, disconnected graphs of a few points.
        embedding = umap.UMAP(n_neighbors=k, min_dist=0.1, random_state=seed, n_jobs=1,
                              init="spectral" if len(points) > 20 else "random").fit_transform(points)
        ax = fig.add_subplot(1, len(settings), panel + 1)
        for modality in modalities:
            for action, color in colors.items():
                mask = (point_modality == modality) & (point_actions == action)
                ax.scatter(embedding[mask, 0], embedding[mask, 1], s=12, color=color, alpha=0.7,
                           marker=MODALITY_MARKERS.get(modality, "o"), linewidths=0)
        ax.set_title(f"n_neighbors = {k}", fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_aspect("equal", adjustable="datalim")
    modality_handles = [Line2D([], [], linestyle="", marker=MODALITY_MARKERS.get(m, "o"), color="#444444",
                               label=MODALITY_LABELS.get(m, m)) for m in modalities]
    action_handles = [Line2D([], [], linestyle="", marker="o", color=color, label=action)
                      for action, color in colors.items()]
    fig.legend(handles=modality_handles, title="marker: encoder", loc="upper right", frameon=False,
               fontsize=8.5, title_fontsize=8.5, bbox_to_anchor=(1.0, 0.9))
    fig.legend(handles=action_handles, title="colour: action", loc="upper right", frameon=False,
               fontsize=8.5, title_fontsize=8.5, bbox_to_anchor=(1.0, 0.9 - 0.045 * (len(modalities) + 2)))
    fig.suptitle(f"UMAP of the latent means of {len(keep)} frames, all encoders embedded together", fontsize=11)
    fig.subplots_adjust(left=0.01, right=1 - 2.1 / fig.get_figwidth(), bottom=0.02, top=0.88, wspace=0.05)
    return fig


def plot_latent_umap(latents: Mapping[str, np.ndarray], actions, out_path: str | Path, *,
                     n_neighbors: Sequence[int] = (5, 15, 50, 200), max_points: int | None = 3000,
                     seed: int = 0) -> list[Path]:
    """UMAP of latent means, one panel per n_neighbors; returns the files written.

    latents: {modality: (N, D)} means of each encoder for the same N frames; actions (N,).
    All modalities are embedded together (so one can see whether the encoders agree), each
    with its own marker, coloured by action. At most max_points frames (random, `seed`) are used;
    n_neighbors is clipped to the number of points - 1.
    """
    return save_figure(latent_umap_plot(latents, actions, n_neighbors=n_neighbors, max_points=max_points,
                                        seed=seed), out_path)


# ---------------------------------------------------------------- errors

METRIC_COLORS = ("#4a6fa5", "#e3a33b", "#6aa36f", "#b05f8f")


def errors_plot(per_joint_mm, tables: Mapping[str, Mapping[str, float]], *, title: str = "") -> Figure:
    """The figure of `plot_errors` (see there), not saved."""
    per_joint_mm = np.asarray(per_joint_mm, np.float64)
    if per_joint_mm.shape != (NUM_JOINTS,):
        raise ValueError(f"per_joint_mm must be ({NUM_JOINTS},), got {per_joint_mm.shape}")
    if not tables:
        raise ValueError("no per-action table to plot")
    first = next(iter(tables.values()))
    labels = [a for a in first if a != AVERAGE] + [AVERAGE]

    fig = Figure(figsize=(max(12.0, 0.5 * len(labels) * (1 + 0.4 * len(tables)) + 8.0), 4.8))
    joint_ax, action_ax = fig.subplots(1, 2, gridspec_kw={"width_ratios": [NUM_JOINTS, 1.4 * len(labels)]})
    bars = joint_ax.bar(range(NUM_JOINTS), per_joint_mm, color=[_bone_color(j) for j in range(NUM_JOINTS)])
    joint_ax.bar_label(bars, fmt="%.0f", fontsize=7, padding=1)
    joint_ax.set_xticks(range(NUM_JOINTS), [n.replace("_", " ") for n in JOINT_NAMES], rotation=60,
                        ha="right", fontsize=8)
    joint_ax.set_ylabel("error (mm)")
    joint_ax.set_title(f"MPJPE per joint (blue: left, red: right); mean {per_joint_mm.mean():.1f} mm", fontsize=10)

    width = 0.8 / len(tables)
    for m, (metric, table) in enumerate(tables.items()):
        offsets = np.arange(len(labels)) + (m - (len(tables) - 1) / 2) * width
        bars = action_ax.bar(offsets, [table[a] for a in labels], width, label=metric,
                             color=METRIC_COLORS[m % len(METRIC_COLORS)])
        action_ax.bar_label(bars, fmt="%.0f", fontsize=6.5, padding=1)
    action_ax.axvline(len(labels) - 1.5, color="#999999", linewidth=0.8)
    action_ax.set_xticks(range(len(labels)), labels, rotation=60, ha="right", fontsize=8)
    action_ax.get_xticklabels()[-1].set_fontweight("bold")
    action_ax.set_title("per action; Average = unweighted mean over actions", fontsize=10)
    action_ax.legend(fontsize=8, frameon=False, loc="upper left", ncol=len(tables))
    for ax in (joint_ax, action_ax):
        ax.spines[["top", "right"]].set_visible(False)
        ax.grid(axis="y", color="#e5e5e5")
        ax.set_axisbelow(True)
        ax.margins(x=0.01, y=0.15)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return fig


def plot_errors(per_joint_mm, tables: Mapping[str, Mapping[str, float]], out_path: str | Path, *,
                title: str = "") -> list[Path]:
    """Bar charts of MPJPE per joint (17,) mm and of per-action tables; returns the files written.

    tables: {metric name: {action: mm, ..., "Average": mm}}, e.g. `EvalResult.tables` or
    `error_tables(...)`; one bar colour per metric.
    """
    return save_figure(errors_plot(per_joint_mm, tables, title=title), out_path)


def error_tables(pred_mm, gt_mm, actions) -> tuple[np.ndarray, dict[str, dict[str, float]]]:
    """(MPJPE per joint (17,), {"MPJPE (P1)": table, "PA-MPJPE (P2)": table}) of (N, 17, 3) poses
    in mm; tables are per action with the action-wise "Average" (see metrics.per_action_table)."""
    pred_mm, gt_mm = np.asarray(pred_mm, np.float64), np.asarray(gt_mm, np.float64)
    joint_errors_mm = per_joint_error(pred_mm, gt_mm)
    return joint_errors_mm.mean(0), {"MPJPE (P1)": per_action_table(joint_errors_mm.mean(-1), actions),
                                     "PA-MPJPE (P2)": per_action_table(pa_mpjpe(pred_mm, gt_mm), actions)}
