"""``nnunet_mtl trainer-dir``: print the folder for nnUNet_extTrainer (so ``export nnUNet_extTrainer=$(...)`` works)."""
from nnunet_mtl.paths import ext_trainer_dir


def register(subparsers):
    p = subparsers.add_parser(
        "trainer-dir", help="print the folder to put in nnUNet_extTrainer so nnU-Net finds our trainers",
        description='Prints the folder that holds our trainers for nnU-Net. Set it once, e.g. in ~/.bashrc: '
                    'export nnUNet_extTrainer="$(nnunet_mtl trainer-dir)"')
    p.set_defaults(func=run)


def run(args):
    print(ext_trainer_dir())
    return 0
